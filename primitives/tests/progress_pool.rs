//! The progress pool reuses its threads (its own test binary: other tests
//! running jobs at the same time would take the idle threads).

use std::sync::mpsc;
use std::time::Duration;

use zccl_primitives::progress::submit;

#[test]
fn threads_are_reused() {
    let id = || std::thread::current().id();
    let (tx, rx) = mpsc::channel();
    let mut ids = std::collections::HashSet::new();
    for _ in 0..20 {
        let tx = tx.clone();
        let _j = submit("r", Box::new(move || tx.send(id()).unwrap())).unwrap();
        ids.insert(rx.recv().unwrap());
        // Let the thread go idle again.
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(
        ids.len() <= 2,
        "{} threads for 20 sequential jobs",
        ids.len()
    );
}
