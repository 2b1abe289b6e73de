//! Settings a bench takes from the environment.

use super::cluster::Error;

/// `name` as a whole number, `default` when unset; garbage is an error naming it.
pub fn env_or(name: &str, default: u64) -> Result<u64, Error> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .map_err(|e| format!("{name}: `{v}` is not a whole number: {e}").into()),
        Err(_) => Ok(default),
    }
}
