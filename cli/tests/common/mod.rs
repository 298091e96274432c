//! Helpers for the daemon suites: a state dir populated with finished and
//! unfinished runs of ferry-tests' `Work` workflow, a real `ferry daemon`
//! child process (killed when dropped), and the CLI against it.

#![allow(dead_code)] // each suite uses part of this

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use ferry_engine::{Event, Json, StepDecl, Submission};
use ferry_tests::{WorkInput, World, fast_options, work};
use serde_json::{Value, json};

/// A `ferry sim` process, killed when dropped.
pub struct Sim {
    pub child: Child,
    pub kubeconfig: PathBuf,
    pub url: String,
}

impl Sim {
    pub fn start(root: &Path, name: &str) -> Sim {
        let kubeconfig = root.join(format!("{name}.kubeconfig"));
        let mut child = Command::new(FERRY)
            .args(["sim", "--name", name, "--data-dir"])
            .arg(root.join(format!("sim-{name}")))
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("ferry sim starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(
            line.starts_with(&format!("ready {name} http://127.0.0.1:")),
            "{line}"
        );
        let url = line.trim().rsplit(' ').next().unwrap().to_owned();
        Sim {
            child,
            kubeconfig,
            url,
        }
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Sim {
    /// The bearer token from the kubeconfig it wrote.
    pub fn token(&self) -> String {
        let kc: Value =
            serde_yaml::from_str(&std::fs::read_to_string(&self.kubeconfig).unwrap()).unwrap();
        kc["users"][0]["user"]["token"].as_str().unwrap().to_owned()
    }

    fn request(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        let addr = self.url.trim_start_matches("http://");
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.token(),
            body.len()
        )
        .unwrap();
        let mut reply = Vec::new();
        s.read_to_end(&mut reply).unwrap();
        parse_http(&reply)
    }

    /// Sets its fault injection (`PUT /sim/v1/faults`).
    pub fn set_faults(&self, faults: &Value) {
        let (status, text) = self.request("PUT", "/sim/v1/faults", &faults.to_string());
        assert!((200..300).contains(&status), "PUT faults: {status} {text}");
    }

    /// Its counters (`GET /sim/v1/counters`): resourceVersion, creates per object.
    pub fn counters(&self) -> Value {
        let (status, text) = self.request("GET", "/sim/v1/counters", "");
        assert_eq!(status, 200, "{text}");
        serde_json::from_str(&text).unwrap()
    }

    /// Its global resourceVersion: every write to any object raises it.
    pub fn resource_version(&self) -> u64 {
        self.counters()["resourceVersion"]
            .as_u64()
            .expect("counters carry the resourceVersion")
    }

    /// Its resourceVersion once its controllers have caught up: unchanged
    /// over a 200 ms window (within 10 s), longer than the simulator's
    /// quietest stretch (a pod waits its default 100 ms ready delay between
    /// scheduled and Running). Controllers react to writes asynchronously,
    /// so "nothing was written" compares settled values.
    pub fn settled_resource_version(&self) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut last = self.resource_version();
        loop {
            std::thread::sleep(Duration::from_millis(200));
            let now = self.resource_version();
            if now == last {
                return now;
            }
            assert!(
                Instant::now() < deadline,
                "the simulator never settled (resourceVersion still moving: {now})"
            );
            last = now;
        }
    }
}

/// The settled resourceVersions of simulators, taken before a request that
/// must write nothing, to compare after it.
pub struct Unchanged<'a> {
    sims: Vec<(&'a Sim, u64)>,
}

impl<'a> Unchanged<'a> {
    pub fn of(sims: &[&'a Sim]) -> Self {
        Unchanged {
            sims: sims
                .iter()
                .map(|s| (*s, s.settled_resource_version()))
                .collect(),
        }
    }

    /// Asserts no simulator was written since: `what` names the request.
    pub fn check(&self, what: &str) {
        for (sim, before) in &self.sims {
            assert_eq!(
                sim.settled_resource_version(),
                *before,
                "{what}: the simulator at {} was written to",
                sim.url
            );
        }
    }
}

/// The ferry binary under test.
pub const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

/// A Secret value planted in one run's spec and step input; it must never be printed.
pub const SECRET: &str = "hunter2-super-secret";

/// A temp workspace: state dir, keys, config, tokens.
pub struct Env {
    /// Keeps the temp dir alive.
    pub tmp: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Env {
        Env {
            tmp: tempfile::tempdir().expect("temp dir"),
        }
    }
    pub fn root(&self) -> &Path {
        self.tmp.path()
    }
    pub fn state(&self) -> PathBuf {
        self.root().join("state")
    }
    pub fn keys(&self) -> PathBuf {
        self.root().join("keys")
    }
    pub fn config(&self) -> PathBuf {
        self.root().join("etc").join("ferry.toml")
    }
    pub fn socket(&self) -> PathBuf {
        self.state().join("ferry.sock")
    }

    /// Writes the config (keys pointing at `keys/`, a file bucket) plus `extra` TOML.
    pub fn write_config(&self, extra: &str) {
        let keys = self.keys();
        let text = format!(
            "default_bucket = \"local\"\n{extra}\n[buckets.local]\nurl = \"file://{}\"\n[keys]\naudit_mac = \"{}\"\nblob_encryption = \"{}\"\n",
            self.root().join("bucket").display(),
            keys.join("audit.key").display(),
            keys.join("blob.key").display()
        );
        std::fs::create_dir_all(self.config().parent().unwrap()).unwrap();
        std::fs::write(self.config(), text).unwrap();
    }

    /// Fills the state dir with runs of the `Work` workflow:
    /// `ok` Succeeded, `rolled` RolledBack (source `bank`), `refused` Refused,
    /// `secret` Succeeded with a Secret in its spec and input, and `stuck`,
    /// unfinished (its step was under way when the engine was aborted).
    pub fn populate(&self) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let world = World::new(&self.root().join("world"));
            let engine = ferry_tests::open(&self.state(), &self.keys(), &world, fast_options()).expect("engine opens");
            let sub = |name: &str, source: &str, extra: Value, plan: Vec<StepDecl>| {
                let mut spec = json!({"name": name, "namespaces": [{"source": source, "destination": format!("{source}-copy")}]});
                if let (Value::Object(s), Value::Object(e)) = (&mut spec, extra) {
                    s.extend(e);
                }
                Submission { name: name.into(), workflow: "clone".into(), spec: Json::encode(&spec).unwrap(), plan }
            };
            let secret_obj = json!({"objects": [{"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"},
                "data": {"password": SECRET}, "stringData": {"token": SECRET}}]});
            let mut secret_input = work("a", WorkInput::default());
            secret_input.input = Json::encode(&secret_obj).unwrap();
            let runs = [
                sub("ok", "shop", json!({}), vec![work("a", WorkInput::default()), work("b", WorkInput::default()).after(&["a"])]),
                sub(
                    "rolled",
                    "bank",
                    json!({}),
                    vec![work("a", WorkInput::default()), work("b", WorkInput { permanent: true, ..Default::default() }).after(&["a"])],
                ),
                sub("refused", "shop", json!({}), vec![work("a", WorkInput { refuse: true, ..Default::default() })]),
                sub("secret", "shop", secret_obj.clone(), vec![secret_input]),
            ];
            for s in runs {
                let run = engine.submit(s).await.expect("submit");
                engine.wait(run).await.expect("run ends");
            }
            let stuck = engine
                .submit(sub("stuck", "shop", json!({}), vec![work("a", WorkInput { wait_for_cancel: true, ..Default::default() })]))
                .await
                .unwrap();
            // Abort (a simulated kill -9) once the step is durably under way.
            let mut events = engine.store().subscribe(stuck, 0);
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let env = tokio::time::timeout_at(tokio::time::Instant::from_std(deadline), events.next()).await.expect("stuck's step starts").unwrap().unwrap();
                if matches!(Event::decode(&env.event), Ok(Event::StepStarted { .. })) {
                    break;
                }
            }
            drop(events);
            engine.abort().await;
        });
    }
}

/// Waits for `cond` with a deadline, checking every 20 ms.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running `ferry daemon`; SIGKILLed on drop if still running.
pub struct Daemon {
    pub child: Child,
    pub stderr: PathBuf,
    pub socket: PathBuf,
}

impl Daemon {
    /// Starts `ferry daemon --state-dir STATE --config CONFIG ARGS…` and waits until its socket answers.
    pub fn start(env: &Env, args: &[&str]) -> Daemon {
        let d = Daemon::spawn(env, args);
        let socket = d.socket.clone();
        let mut d = d;
        wait_until("the daemon's socket", Duration::from_secs(30), || {
            if let Ok(Some(status)) = d.child.try_wait() {
                panic!("daemon exited early ({status}): {}", d.stderr_text());
            }
            std::os::unix::net::UnixStream::connect(&socket).is_ok()
        });
        d
    }

    /// Spawns the daemon without waiting for it.
    pub fn spawn(env: &Env, args: &[&str]) -> Daemon {
        Daemon::spawn_env(env, args, &[])
    }

    /// Waits until the socket answers (the daemon exiting early is a failure).
    pub fn wait_ready(&mut self) {
        let socket = self.socket.clone();
        wait_until("the daemon's socket", Duration::from_secs(30), || {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("daemon exited early ({status}): {}", self.stderr_text());
            }
            std::os::unix::net::UnixStream::connect(&socket).is_ok()
        });
    }

    /// SIGKILL, and reap it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Spawns the daemon with extra environment variables, without waiting.
    pub fn spawn_env(env: &Env, args: &[&str], vars: &[(&str, &str)]) -> Daemon {
        let n = std::fs::read_dir(env.root())
            .map(|d| d.count())
            .unwrap_or(0);
        let stderr = env.root().join(format!("daemon-{n}.log"));
        let child = Command::new(FERRY)
            .arg("daemon")
            .arg("--state-dir")
            .arg(env.state())
            .arg("--config")
            .arg(env.config())
            .args(args)
            .env("RUST_LOG", "info")
            .env("XDG_CONFIG_HOME", env.root().join("xdg"))
            .env_remove("FERRY_SOCKET")
            .envs(vars.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("daemon starts");
        Daemon {
            child,
            stderr,
            socket: env.socket(),
        }
    }

    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Sends a signal with `kill` and waits (with a deadline) for the exit.
    pub fn signal(&mut self, sig: &str, timeout: Duration) -> ExitStatus {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(ok.success());
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not exit within {timeout:?} of SIG{sig}: {}",
                self.stderr_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs the CLI against this daemon's socket.
    pub fn ferry(&self, args: &[&str]) -> Output {
        cli(&["--socket", self.socket.to_str().unwrap()], args)
    }

    /// A raw HTTP/1.1 request over the socket: (status, body).
    pub fn http(&self, method: &str, path: &str) -> (u16, String) {
        self.http_body(method, path, "")
    }

    /// A raw HTTP/1.1 request with a JSON body over the socket: (status, body).
    pub fn http_body(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        let mut s = std::os::unix::net::UnixStream::connect(&self.socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        write!(s, "{method} {path} HTTP/1.1\r\nHost: ferry\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).unwrap();
        parse_http(&raw)
    }

    /// The address of the TLS listener, from the daemon's JSON log
    /// (`--log-format json`), once it is bound.
    pub fn tls_addr(&self) -> String {
        let mut addr = String::new();
        wait_until("the TLS listener", Duration::from_secs(20), || {
            for line in self.stderr_text().lines() {
                let Ok(v) = serde_json::from_str::<Value>(line) else {
                    continue;
                };
                if v["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("over TLS"))
                {
                    addr = v["fields"]["addr"].as_str().unwrap().to_owned();
                    return true;
                }
            }
            false
        });
        addr
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Splits a raw HTTP/1.1 response into status and (de-chunked) body.
pub fn parse_http(raw: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, after)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            out.push_str(&after[..n]);
            rest = &after[n + 2..];
        }
        out
    } else {
        body.to_owned()
    };
    (status, body)
}

/// A self-signed certificate for localhost and its key, written into the
/// workspace: (cert path, key path).
pub fn tls_files(env: &Env) -> (PathBuf, PathBuf) {
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert_path = env.root().join("tls.crt");
    let key_path = env.root().join("tls.key");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    (cert_path, key_path)
}

/// Runs the CLI with `conn` options then `args`.
pub fn cli(conn: &[&str], args: &[&str]) -> Output {
    Command::new(FERRY)
        .args(conn)
        .args(args)
        .env_remove("FERRY_SOCKET")
        .env_remove("FERRY_SERVER")
        .env_remove("FERRY_TOKEN")
        .stdin(Stdio::null())
        .output()
        .expect("ferry runs")
}

/// The exit code of a CLI run.
pub fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Parses a CLI run's stdout as JSON, failing with its output otherwise.
pub fn json_of(o: &Output) -> Value {
    assert_eq!(code(o), 0, "stdout: {}\nstderr: {}", stdout(o), stderr(o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(o)))
}

/// Names and phases of a `get clones -o json` answer.
pub fn names_phases(list: &Value) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["name"].as_str().unwrap().to_owned(),
                i["phase"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    v.sort();
    v
}
