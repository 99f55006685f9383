//! Contexts: `jitsudo login --server URL` makes that server the current one; `jitsudo
//! context list/current/use` shows and switches; each server's token goes to it alone.

use crate::harness::{Jitsudod, User};

/// The `jitsudo` binary with the user's dirs but no JITSUDO_SERVER: the CLI's own idea
/// of the current server decides.
fn run(user: &User, args: &[&str]) -> crate::harness::Run {
    let out = user
        .command()
        .env_remove("JITSUDO_SERVER")
        .args(args)
        .output()
        .expect("jitsudo runs");
    crate::harness::Run::from_output(out)
}

#[test]
fn login_to_two_servers_switch_between_them_each_with_its_own_token() {
    let (one, two) = (Jitsudod::dev(), Jitsudod::dev());
    let me = one.user("alice");

    let r = run(&me, &["whoami"]).fails(2);
    assert!(r.stderr.contains("no server"), "{}", r.stderr);
    let r = run(&me, &["login", "--dev", "alice", "--server", &one.url]).ok();
    assert!(r.stderr.contains("now the current server"), "{}", r.stderr);
    assert_eq!(
        run(&me, &["whoami", "-o", "json"]).ok().json()["subject"],
        "alice"
    );

    // A second server, as someone else there: it becomes current.
    run(&me, &["login", "--dev", "bob", "--server", &two.url]).ok();
    assert_eq!(
        run(&me, &["whoami", "-o", "json"]).ok().json()["subject"],
        "bob"
    );
    assert_eq!(
        run(&me, &["context", "current"]).ok().stdout.trim(),
        two.url.as_str()
    );
    let list = run(&me, &["context", "list", "-o", "json"]).ok().json();
    let servers: Vec<(&str, bool)> = list
        .as_array()
        .expect("a list")
        .iter()
        .map(|c| {
            (
                c["server"].as_str().expect("server"),
                c["current"].as_bool().expect("current"),
            )
        })
        .collect();
    let mut want = vec![(one.url.as_str(), false), (two.url.as_str(), true)];
    want.sort();
    assert_eq!(servers, want);
    assert!(
        list[0]["login"] == "dev" && list[1]["login"] == "dev",
        "{list}"
    );
    let table = run(&me, &["context", "list"]).ok().stdout;
    assert!(table.starts_with("CURRENT"), "{table}");

    // Back to the first: its own token (a token of the second server's issuer would be
    // refused there).
    let r = run(&me, &["context", "use", &one.url]).ok();
    assert!(r.stderr.contains("now"), "{}", r.stderr);
    assert_eq!(
        run(&me, &["whoami", "-o", "json"]).ok().json()["subject"],
        "alice"
    );
    // --server still picks one for a single command, without switching.
    let r = run(&me, &["whoami", "-o", "json", "--server", &two.url]).ok();
    assert_eq!(r.json()["subject"], "bob");
    assert_eq!(
        run(&me, &["context", "current"]).ok().stdout.trim(),
        one.url.as_str()
    );

    // An unknown server is refused, naming the known ones.
    let r = run(&me, &["context", "use", "http://127.0.0.1:9"]).fails(2);
    assert!(
        r.stderr.contains("not a server known here") && r.stderr.contains(&one.url),
        "{}",
        r.stderr
    );
    // Logging out of one leaves the other.
    run(&me, &["logout"]).ok();
    let r = run(&me, &["whoami"]).fails(3);
    assert!(r.stderr.contains("not logged in"), "{}", r.stderr);
    let r = run(&me, &["whoami", "-o", "json", "--server", &two.url]).ok();
    assert_eq!(r.json()["subject"], "bob");
}
