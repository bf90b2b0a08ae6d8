//! Ledger paths and table paths: a file's path relative to its table, which objects are a
//! file's, and the fetch date a path names.

use anyhow::Context;
use chrono::NaiveDate;

/// `raw/date=…/name` relative to its table: `date=…/name`.
pub(super) fn in_table(path: &str) -> String {
    path.split_once('/')
        .map_or(path, |(_, rest)| rest)
        .to_string()
}

/// Whether `object` (relative to the table) is one of the objects of the file whose stem (path
/// without `.parquet`, relative to the table) is `stem`: the first generation's or a rewrite's.
pub(super) fn is_object_of(object: &str, stem: &str) -> bool {
    object.strip_prefix(stem).is_some_and(|rest| {
        rest == ".parquet" || (rest.starts_with("-g") && rest.ends_with(".parquet"))
    })
}

/// The fetch date in a ledger path (`raw/date=YYYY-MM-DD/…`).
pub(super) fn date_of(path: &str) -> anyhow::Result<NaiveDate> {
    let part = path
        .split('/')
        .find_map(|p| p.strip_prefix("date="))
        .with_context(|| format!("{path}: no date= directory"))?;
    NaiveDate::parse_from_str(part, "%Y-%m-%d").with_context(|| format!("{path}: date={part}"))
}
