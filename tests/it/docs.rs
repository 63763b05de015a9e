//! The flags page is `execd --help`: a flag added or changed without
//! `scripts/docs-flags` fails here.

#[test]
fn flags_page_matches_help() {
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_execd"))
        .arg("--help")
        // Set EXECD_* variables would show in the help text.
        .env_clear()
        .output()
        .expect("execd --help");
    assert!(help.status.success());
    let help = String::from_utf8(help.stdout).expect("help is UTF-8");
    let page = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/flags.md"))
        .expect("docs/flags.md");
    let documented = page
        .split_once("```text\n")
        .and_then(|(_, rest)| rest.rsplit_once("```"))
        .map(|(block, _)| block)
        .expect("docs/flags.md holds a text block");
    assert!(
        documented == help,
        "docs/flags.md differs from `execd --help`: run scripts/docs-flags"
    );
}
