//! The README's parameter table is the server's own table, so the docs cannot drift.

#[test]
fn readme_parameter_table_matches_the_code() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme
        .find("<!-- params:start -->\n")
        .expect("params:start marker")
        + "<!-- params:start -->\n".len();
    let end = readme
        .find("<!-- params:end -->")
        .expect("params:end marker");
    assert_eq!(
        &readme[start..end],
        stategrid::config::params_markdown(),
        "README parameter table is stale: replace it with the output of `stategrid params`"
    );
}
