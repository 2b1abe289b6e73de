//! How a column's type is named in the DDL and casts a job runs on its targets, the same
//! way on the source (which names it) and on a target (whose columns are compared with it).
//!
//! A type of `pg_catalog` goes bare, as PostgreSQL prints it. A type that belongs to an
//! extension goes bare too: the target may keep that extension in another schema than the
//! source (Supabase keeps every extension in `extensions`), so the source's schema would
//! name a type the target does not have, and each target session puts the schemas of its
//! extensions on its `search_path` ([`crate::pg_connect::EXTENSIONS_ON_PATH`]). Every other
//! type carries its schema, whatever the session's path (a source database's path on
//! `shop` printed `shop.status` as `status`, which no target session found). An array is
//! named by its element type's rule.

/// A SQL expression naming type `oid` with modifier `typmod` (SQL expressions, such as
/// `a.atttypid` and `a.atttypmod`, or `$1::oid` and `NULL`) by the module's rules; `NULL`
/// for an OID the catalog does not know.
pub fn portable_type_name(oid: &str, typmod: &str) -> String {
    format!(
        "(SELECT CASE
             WHEN tn.nspname = 'pg_catalog' THEN f.name
             WHEN EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_type'::regclass
                            AND d.objid = base.oid AND d.deptype = 'e')
                 THEN CASE WHEN starts_with(f.name, quote_ident(tn.nspname) || '.')
                           THEN substr(f.name, length(quote_ident(tn.nspname)) + 2)
                           ELSE f.name END
             WHEN starts_with(f.name, quote_ident(tn.nspname) || '.') THEN f.name
             ELSE quote_ident(tn.nspname) || '.' || f.name END
         FROM pg_type ty
         JOIN pg_type base ON base.oid = CASE WHEN ty.typcategory = 'A' AND ty.typelem <> 0
                                              THEN ty.typelem ELSE ty.oid END
         JOIN pg_namespace tn ON tn.oid = base.typnamespace
         CROSS JOIN LATERAL (SELECT format_type(ty.oid, {typmod}) AS name) f
         WHERE ty.oid = {oid})"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names as the source's catalog session (empty path) and a target session (default
    /// path, an extension off it) give them, on a real server.
    #[tokio::test(flavor = "current_thread")]
    async fn extension_types_go_bare_and_others_carry_their_schema_whatever_the_path() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cluster = crate::embedded::pg_cluster::PgCluster::scratch(&dir);
        cluster
            .psql(
                "postgres",
                "CREATE SCHEMA shop; CREATE SCHEMA extensions;
                 CREATE EXTENSION citext SCHEMA extensions;
                 CREATE TYPE shop.status AS ENUM ('new');
                 CREATE TYPE public.mood AS ENUM ('calm');
                 CREATE TABLE t (a extensions.citext, b extensions.citext[], c shop.status, d public.mood[],
                     e numeric(10,2), f int[], g \"char\", h varchar(3))",
            )
            .expect("setup");
        let expr = portable_type_name("a.atttypid", "a.atttypmod");
        let query = format!(
            "SELECT string_agg({expr}, ' | ' ORDER BY a.attnum) FROM pg_attribute a
             WHERE a.attrelid = 'public.t'::regclass AND a.attnum > 0"
        );
        let expected = "citext | citext[] | shop.status | public.mood[] | numeric(10,2) | \
                        integer[] | \"char\" | character varying(3)";
        for path in ["''", "shop, public, extensions", "public"] {
            let out = cluster
                .psql("postgres", &format!("SET search_path = {path}; {query}"))
                .expect("query");
            assert_eq!(out, expected, "search_path = {path}");
        }
        let unknown = cluster
            .psql(
                "postgres",
                &format!(
                    "SELECT coalesce({}, 'none')",
                    portable_type_name("4294967295::oid", "NULL")
                ),
            )
            .expect("query");
        assert_eq!(unknown, "none");
    }
}
