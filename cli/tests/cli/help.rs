use crate::Fila;

#[test]
fn every_subcommand_has_examples() {
    let fila = Fila::at("127.0.0.1:1");
    for command in [
        &[][..],
        &["queue"],
        &["queue", "create"],
        &["queue", "delete"],
        &["queue", "list"],
        &["queue", "inspect"],
        &["queue", "update"],
        &["queue", "purge"],
        &["config"],
        &["config", "set"],
        &["config", "get"],
        &["config", "list"],
        &["config", "delete"],
        &["throttle"],
        &["throttle", "set"],
        &["throttle", "list"],
        &["throttle", "delete"],
        &["weight"],
        &["weight", "set"],
        &["weight", "clear"],
        &["redrive"],
        &["peek"],
        &["explain"],
        &["stats"],
        &["lua"],
        &["lua", "test"],
        &["enqueue"],
        &["lease"],
        &["completions"],
    ] {
        let args: Vec<&str> = command.iter().copied().chain(["--help"]).collect();
        let help = fila.ok(&args);
        assert!(help.contains("Example"), "fila {args:?} has examples:\n{help}");
        assert!(help.contains("Usage: fila"), "{help}");
    }
    let top = fila.ok(&["--help"]);
    assert!(top.contains("FILA_ADDR") && top.contains("Exit status"), "{top}");
}

#[test]
fn completions_are_generated() {
    let fila = Fila::at("127.0.0.1:1");
    let bash = fila.ok(&["completions", "bash"]);
    assert!(bash.contains("_fila()") && bash.contains("enqueue"), "{bash}");
    let zsh = fila.ok(&["completions", "zsh"]);
    assert!(zsh.starts_with("#compdef fila"), "{zsh}");
    assert_eq!(fila.run(&["completions", "tcsh"]).failed(2).split(' ').next(), Some("invalid"));
}
