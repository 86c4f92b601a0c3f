//! `ZCCL_DEBUG*` end to end. A log subscriber is process-wide, so each case
//! runs in a fresh copy of this test binary: with `ZCCL_LOG_TEST_ROLE` set,
//! the `child` test installs logging and logs; without it, it does nothing.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use zccl_runtime::logging::{self, BOOTSTRAP, INIT, NET, P2P};
use zccl_transports::ifname::Interface;

#[test]
fn child() {
    let Ok(role) = std::env::var("ZCCL_LOG_TEST_ROLE") else {
        return;
    };
    if role == "own-subscriber" {
        // A program with its own subscriber: zccl must leave it alone.
        let own = tracing::subscriber::NoSubscriber::default();
        tracing::subscriber::set_global_default(own).unwrap();
    }
    match logging::init_from_env() {
        Ok(()) => println!("INIT OK"),
        Err(e) => {
            println!("INIT ERR {e}");
            return;
        }
    }
    assert!(logging::init_from_env().is_ok(), "second call");
    tracing::info!(target: INIT, "before the rank is known");
    logging::set_rank(5);
    tracing::info!(target: INIT, "init message");
    tracing::info!(target: NET, "net info message");
    tracing::warn!(target: NET, "net warning");
    tracing::debug!(target: INIT, "debug message");
    tracing::info!(target: "my_app", "application message");
    tracing::info!(target: BOOTSTRAP, rank = 7u32, "own rank field");
    tracing::info!(target: "zccl_runtime::bootstrap", "module path target");
    let span = tracing::info_span!(target: P2P, "comm", rank = 9u32);
    span.in_scope(|| tracing::warn!(target: P2P, "inside a rank span"));
    logging::log_interfaces(
        5,
        &[
            Interface {
                name: "eth0".into(),
                addr: "10.1.2.3".parse().unwrap(),
            },
            Interface {
                name: "eth1".into(),
                addr: "10.1.3.3".parse().unwrap(),
            },
        ],
    );
}

struct Case {
    stdout: String,
    log: Option<String>,
}

fn run_child(role: &str, env: &[(&str, &str)]) -> Case {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir: PathBuf = std::env::temp_dir().join(format!(
        "zccl-logtest-{}-{nanos}-{role}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "child", "--nocapture", "--test-threads=1"])
        .env("ZCCL_LOG_TEST_ROLE", role)
        .env(
            "ZCCL_DEBUG_FILE",
            dir.join("zccl.%h.%p.log").to_str().unwrap(),
        )
        .env_remove("ZCCL_DEBUG")
        .env_remove("ZCCL_DEBUG_SUBSYS");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let path = dir.join(format!("zccl.{}.{pid}.log", logging::short_hostname()));
    let log = std::fs::read_to_string(&path).ok();
    let _ = std::fs::remove_dir_all(&dir);
    Case {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        log,
    }
}

fn line_with<'a>(log: &'a str, text: &str) -> Option<&'a str> {
    log.lines().find(|l| l.contains(text))
}

#[test]
fn info_with_subsystems_goes_to_the_file_in_nccl_layout() {
    let c = run_child(
        "log",
        &[
            ("ZCCL_DEBUG", "info"),
            ("ZCCL_DEBUG_SUBSYS", "INIT,BOOTSTRAP"),
        ],
    );
    assert!(c.stdout.contains("INIT OK"), "{}", c.stdout);
    let log = c.log.expect("ZCCL_DEBUG_FILE with %h and %p expanded");
    let host = logging::short_hostname();
    let version = line_with(&log, "zccl version").expect("version line");
    assert!(version.contains(" zccl INFO INIT "), "{version}");
    // host:pid:tid [rank] zccl LEVEL SUBSYS message
    let l = line_with(&log, "init message").expect("INIT info");
    let head = l.split(" zccl ").next().unwrap();
    let mut parts = head.split(' ');
    let _time = parts.next().unwrap();
    let who: Vec<&str> = parts.next().unwrap().split(':').collect();
    assert_eq!(who[0], host, "{l}");
    assert!(
        who[1].parse::<u32>().is_ok() && who[2].parse::<u64>().is_ok(),
        "{l}"
    );
    assert_eq!(parts.next(), Some("[5]"), "{l}");
    assert!(l.contains(" zccl INFO INIT init message"), "{l}");
    let before = line_with(&log, "before the rank is known").unwrap();
    assert!(!before.contains('['), "{before}");
    assert!(
        line_with(&log, "net info message").is_none(),
        "NET is not selected:\n{log}"
    );
    let w = line_with(&log, "net warning").expect("warnings ignore the subsystem filter");
    assert!(w.contains(" zccl WARN NET "), "{w}");
    assert!(line_with(&log, "debug message").is_none(), "{log}");
    assert!(line_with(&log, "application message").is_none(), "{log}");
    let own = line_with(&log, "own rank field").unwrap();
    assert!(own.contains(" [7] zccl INFO BOOTSTRAP "), "{own}");
    let m = line_with(&log, "module path target").unwrap();
    assert!(m.contains(" zccl INFO BOOTSTRAP "), "{m}");
    let s = line_with(&log, "inside a rank span").unwrap();
    assert!(s.contains(" [9] zccl WARN P2P "), "{s}");
    let nics = line_with(&log, "NIC(s)").expect("log_interfaces line");
    assert!(
        nics.contains("[5] zccl INFO INIT using 2 NIC(s): [0]eth0:10.1.2.3 [1]eth1:10.1.3.3"),
        "{nics}"
    );
}

#[test]
fn default_level_is_warn_without_a_version_line() {
    let c = run_child("log", &[]);
    let log = c.log.expect("warnings are logged by default");
    assert!(line_with(&log, "net warning").is_some(), "{log}");
    assert!(line_with(&log, "inside a rank span").is_some(), "{log}");
    assert!(line_with(&log, "zccl version").is_none(), "{log}");
    assert!(line_with(&log, "init message").is_none(), "{log}");
}

#[test]
fn version_level_prints_only_the_version() {
    let c = run_child("log", &[("ZCCL_DEBUG", "VERSION")]);
    let log = c.log.expect("version line");
    assert_eq!(log.lines().count(), 1, "{log}");
    assert!(log.contains(&format!("zccl version {}", env!("CARGO_PKG_VERSION"))));
}

#[test]
fn trace_with_exclusion_shows_everything_else() {
    let c = run_child(
        "log",
        &[("ZCCL_DEBUG", "TRACE"), ("ZCCL_DEBUG_SUBSYS", "^NET")],
    );
    let log = c.log.unwrap();
    assert!(line_with(&log, "debug message").is_some(), "{log}");
    assert!(line_with(&log, "net info message").is_none(), "{log}");
    assert!(line_with(&log, "application message").is_none(), "{log}");
}

#[test]
fn an_invalid_level_is_an_error_naming_the_valid_ones() {
    let c = run_child("log", &[("ZCCL_DEBUG", "chatty")]);
    assert!(c.stdout.contains("INIT ERR"), "{}", c.stdout);
    assert!(
        c.stdout.contains("\"chatty\"")
            && c.stdout
                .contains("VERSION, ERROR, WARN, INFO, DEBUG, TRACE"),
        "{}",
        c.stdout
    );
    assert!(c.log.is_none());
    let c = run_child("log", &[("ZCCL_DEBUG_SUBSYS", "INIT,GPU")]);
    assert!(
        c.stdout.contains("INIT ERR") && c.stdout.contains("\"GPU\""),
        "{}",
        c.stdout
    );
}

#[test]
fn a_program_with_its_own_subscriber_keeps_it() {
    let c = run_child("own-subscriber", &[("ZCCL_DEBUG", "INFO")]);
    assert!(c.stdout.contains("INIT OK"), "{}", c.stdout);
    assert!(
        c.log.is_none(),
        "zccl must not log when the program has a subscriber"
    );
}
