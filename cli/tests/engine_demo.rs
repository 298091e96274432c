//! `ferry engine-demo` runs end to end and says what it showed.

use std::process::Command;

#[test]
fn engine_demo_resumes_after_a_crash_and_rolls_back_a_failed_run() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["engine-demo", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("StepInterrupted"), "{stdout}");
    assert!(stdout.contains("ended Succeeded"), "{stdout}");
    assert!(
        stdout.contains("ended RolledBack; files left in its destination: 0"),
        "{stdout}"
    );
    assert_eq!(stdout.matches(", verified").count(), 2, "{stdout}");
    // The copied files equal their sources byte for byte.
    for i in 0..3 {
        let name = format!("file-{i}.bin");
        assert_eq!(
            std::fs::read(dir.path().join("src").join(&name)).unwrap(),
            std::fs::read(dir.path().join("dst").join(&name)).unwrap()
        );
    }
}
