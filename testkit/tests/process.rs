//! The process handle against `/bin/sh` scripts: ready lines, failures with
//! exit codes and logs, signals, and the stop on drop.

use std::time::Duration;

use kvtier_testkit::{Error, Launch, NotReady, Stop};

fn sh(script: &str) -> Launch {
    Launch::new("/bin/sh").args(["-c", script]).name("sh")
}

#[test]
fn ready_line_fields_and_kill() {
    let mut p = sh("echo 'sh ready grpc=127.0.0.1:9 metrics=off'; exec sleep 30")
        .spawn()
        .unwrap();
    let grpc: std::net::SocketAddr = p.line().parse("grpc").unwrap();
    assert_eq!(grpc.port(), 9);
    assert_eq!(p.line().get_on("metrics"), None);
    assert!(p.status_kib("VmRSS").unwrap() > 0);
    p.kill().unwrap();
    p.kill().unwrap();
    assert!(!p.is_running());
    assert!(matches!(
        p.terminate(Duration::from_secs(1)),
        Err(Error::Stopped(_))
    ));
}

#[test]
fn exit_before_ready_reports_code_and_log() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("x.log");
    let err = sh("echo 'bad flag --x' >&2; exit 3")
        .log(&log)
        .spawn()
        .unwrap_err();
    let Error::NotReady {
        reason, log: text, ..
    } = &err
    else {
        panic!("{err}");
    };
    assert_eq!(*reason, NotReady::Exited(Some(3)));
    assert!(text.contains("bad flag --x"), "{text}");
    assert!(err.to_string().contains("bad flag --x"), "{err}");
}

#[test]
fn wrong_first_line_fails_unless_skipped() {
    let err = sh("echo hello; echo 'sh ready'; exec sleep 30")
        .spawn()
        .unwrap_err();
    assert!(
        matches!(err, Error::NotReady { reason: NotReady::Printed(ref l), .. } if l == "hello")
    );
    let mut p = sh("echo hello; echo 'sh ready'; echo after; exec sleep 30")
        .skip_other_lines()
        .keep_lines()
        .spawn()
        .unwrap();
    let lines = p.take_lines().unwrap();
    assert_eq!(
        lines.recv_timeout(Duration::from_secs(10)).unwrap(),
        "after"
    );
}

#[test]
fn timeout_kills_the_child() {
    let err = sh("exec sleep 30")
        .timeout(Duration::from_millis(200))
        .spawn()
        .unwrap_err();
    assert!(matches!(
        err,
        Error::NotReady {
            reason: NotReady::Timeout(_),
            ..
        }
    ));
}

#[test]
fn terminate_returns_the_exit_code() {
    let mut p = sh("trap 'exit 7' TERM; echo 'sh ready'; while :; do sleep 0.05; done")
        .ready("sh ready")
        .spawn()
        .unwrap();
    assert_eq!(p.terminate(Duration::from_secs(10)).unwrap(), 7);
}

#[test]
fn drop_with_terminate_lets_it_clean_up() {
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("flag");
    let script = format!(
        "trap 'touch {}; exit 0' TERM; echo 'sh ready'; while :; do sleep 0.05; done",
        flag.display()
    );
    let p = sh(&script)
        .stop_on_drop(Stop::Terminate(Duration::from_secs(5)))
        .spawn()
        .unwrap();
    drop(p);
    assert!(flag.exists());
}

#[test]
fn log_append_keeps_earlier_runs() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("a.log");
    for i in 0..2 {
        let p = sh(&format!("echo run{i} >&2; echo 'sh ready'; exec sleep 30"))
            .log_append(&log)
            .spawn()
            .unwrap();
        // stderr is written before the ready line.
        assert!(p.log().contains(&format!("run{i}")));
    }
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("run0") && text.contains("run1"), "{text}");
}

#[test]
fn a_probe_replaces_the_ready_line() {
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("up");
    let script = format!("sleep 0.3; touch {}; exec sleep 30", flag.display());
    let probe_flag = flag.clone();
    let p = sh(&script)
        .ready_when(move || probe_flag.exists())
        .spawn()
        .unwrap();
    assert!(flag.exists());
    assert!(
        p.ready_after() >= Duration::from_millis(250),
        "{:?}",
        p.ready_after()
    );
    assert_eq!(p.line().text(), "");
    // A child that exits before its probe holds reports its exit code.
    let err = sh("exit 4").ready_when(|| false).spawn().unwrap_err();
    assert!(
        matches!(
            err,
            Error::NotReady {
                reason: NotReady::Exited(Some(4)),
                ..
            }
        ),
        "{err}"
    );
    let err = sh("exec sleep 30")
        .ready_when(|| false)
        .timeout(Duration::from_millis(300))
        .spawn()
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::NotReady {
                reason: NotReady::Timeout(_),
                ..
            }
        ),
        "{err}"
    );
}
