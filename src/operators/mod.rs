//! Pure Timely operators, one per file, as extension traits on streams. No sockets, no
//! tokio, no clocks: they see only the data and the frontier.

pub mod access;
pub mod columnar;
pub mod history;
pub mod packed_row;
pub mod partition;
pub mod row_spill;
pub mod version;
