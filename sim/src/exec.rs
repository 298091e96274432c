//! Pod exec over WebSocket (`v5.channel.k8s.io`, `v4.channel.k8s.io`), as
//! kube 5 and kubectl 1.30+ speak it.
//!
//! The command runs as a local process. Every volume `mountPath` of the
//! container (volumeMounts → PVC → PV directory, or an emptyDir directory)
//! is replaced by the volume's local directory wherever it starts a path in
//! an argument, also inside scripts (`sh -c 'cd /data && find .'`), but not
//! inside a longer name (`/database` is not `/data`). The working directory
//! is the mapped `workingDir`, else a per-pod directory under the data dir.
//!
//! The local commands are the host's (GNU tar, coreutils), whatever the
//! image, but for one difference that has cost a real clone: in an image
//! named `busybox`, `tar` refuses the GNU options BusyBox's lacks
//! ([`BUSYBOX_TAR_REFUSES`]), as BusyBox 1.35/1.36 does: the message
//! `tar: unrecognized option '--sparse'` on stderr and exit status 1.
//!
//! Framing: byte 0 of each binary message is the channel (0 stdin, 1 stdout,
//! 2 stderr, 3 status, 4 resize, 255 close on v5). All output is sent before
//! the status; then a close frame (1000). A fault
//! ([`crate::FaultConfig::drop_exec_after`]) cuts the connection abruptly
//! after N output bytes.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use axum::extract::FromRequestParts;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::api::Server;
use crate::ctl::{PATH_ANNOTATION, gr, str_at};
use crate::status::ApiError;
use crate::util::{form_decode, meta_str};

/// What the exec request asked for.
struct Request {
    stdin: bool,
    stdout: bool,
    stderr: bool,
    command: Vec<String>,
    container: Option<String>,
}

fn parse_query(q: Option<&str>) -> Request {
    let mut r = Request {
        stdin: false,
        stdout: false,
        stderr: false,
        command: vec![],
        container: None,
    };
    for kv in q.unwrap_or("").split('&').filter(|s| !s.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        let v = form_decode(v);
        let on = v == "true" || v == "1";
        match k {
            "stdin" => r.stdin = on,
            "stdout" => r.stdout = on,
            "stderr" => r.stderr = on,
            "command" => r.command.push(v),
            "container" => r.container = Some(v),
            _ => {}
        }
    }
    r
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/')
}

/// Replace each mount path (longest first) where it starts a path in `arg`.
pub fn rewrite_arg(arg: &str, mounts: &[(String, PathBuf)]) -> String {
    let mut out = String::with_capacity(arg.len());
    let mut i = 0;
    let bytes = arg;
    'outer: while i < bytes.len() {
        let prev = bytes[..i].chars().next_back();
        if prev.is_none_or(|c| !is_name_char(c)) {
            for (m, dir) in mounts {
                if bytes[i..].starts_with(m.as_str()) {
                    let next = bytes[i + m.len()..].chars().next();
                    if next.is_none_or(|c| c == '/' || !is_name_char(c)) {
                        out.push_str(&dir.to_string_lossy());
                        i += m.len();
                        continue 'outer;
                    }
                }
            }
        }
        let c = bytes[i..].chars().next().unwrap_or(' ');
        out.push(c);
        i += c.len_utf8();
    }
    out
}

/// Mount path → local directory for `container` of `pod`.
fn mounts(server: &Server, pod: &Value, container: &Value) -> Vec<(String, PathBuf)> {
    let rt = &server.state.runtime;
    let ns = meta_str(pod, "namespace");
    let vols: Vec<Value> = pod
        .pointer("/spec/volumes")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut out = Vec::new();
    server.state.store.transact(|txn| {
        for vm in container
            .get("volumeMounts")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let (name, path) = (str_at(vm, "/name"), str_at(vm, "/mountPath"));
            let path = path.trim_end_matches('/');
            if path.is_empty() {
                continue;
            }
            let Some(v) = vols.iter().find(|v| str_at(v, "/name") == name) else {
                continue;
            };
            let dir = if let Some(claim) = v
                .pointer("/persistentVolumeClaim/claimName")
                .and_then(Value::as_str)
            {
                let pvc = txn.get(&gr("", "persistentvolumeclaims"), ns, claim);
                let pv = pvc.and_then(|c| {
                    txn.get(
                        &gr("", "persistentvolumes"),
                        "",
                        str_at(&c, "/spec/volumeName"),
                    )
                });
                pv.and_then(|pv| {
                    pv.pointer("/metadata/annotations")
                        .and_then(|a| a.get(PATH_ANNOTATION))
                        .and_then(Value::as_str)
                        .map(PathBuf::from)
                })
            } else {
                Some(
                    rt.data_dir
                        .join("pods")
                        .join(meta_str(pod, "uid"))
                        .join("volumes")
                        .join(name),
                )
            };
            let Some(mut dir) = dir else { continue };
            let sub = str_at(vm, "/subPath");
            if !sub.is_empty() {
                dir = dir.join(sub);
            }
            let _ = std::fs::create_dir_all(&dir);
            out.push((path.to_string(), dir));
        }
    });
    out.sort_by_key(|(m, _)| std::cmp::Reverse(m.len()));
    out
}

fn status_failure(code: Option<i32>, message: &str) -> Value {
    match code {
        Some(c) => json!({"metadata": {}, "status": "Failure",
            "message": format!("command terminated with non-zero exit code: exit status {c}"),
            "reason": "NonZeroExitCode", "details": {"causes": [{"reason": "ExitCode", "message": c.to_string()}]}}),
        None => {
            json!({"metadata": {}, "status": "Failure", "message": message, "reason": "InternalError", "code": 500})
        }
    }
}

/// Serve `GET .../pods/{name}/exec`: checks, then the WebSocket upgrade.
pub async fn handle(
    server: Arc<Server>,
    mut parts: http::request::Parts,
    ns: &str,
    name: &str,
) -> Result<Response, ApiError> {
    let req = parse_query(parts.uri.query());
    let info = server
        .state
        .registry
        .lookup("", "v1", "pods")
        .ok_or_else(ApiError::no_route)?;
    let pod = server
        .state
        .store
        .transact(|t| t.get(&gr("", "pods"), ns, name))
        .ok_or_else(|| ApiError::not_found(&info, name))?;
    let phase = str_at(&pod, "/status/phase");
    if matches!(phase, "Succeeded" | "Failed") {
        return Err(ApiError::bad_request(format!(
            "cannot exec into a container in a completed pod; current phase is {phase}"
        )));
    }
    let containers: Vec<Value> = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let container = match &req.container {
        Some(c) => containers
            .iter()
            .find(|x| str_at(x, "/name") == c)
            .cloned()
            .ok_or_else(|| {
                ApiError::bad_request(format!("container {c} is not valid for pod {name}"))
            })?,
        None => containers
            .first()
            .cloned()
            .ok_or_else(|| ApiError::bad_request(format!("pod {name} has no containers")))?,
    };
    if phase != "Running" {
        // The kubelet has no running container to exec into yet.
        return Err(ApiError::bad_request(format!(
            "unable to upgrade connection: container not found (\"{}\")",
            str_at(&container, "/name")
        )));
    }
    if req.command.is_empty() {
        return Err(ApiError::bad_request("you must specify at least 1 command"));
    }
    let ws = WebSocketUpgrade::from_request_parts(&mut parts, &())
        .await
        .map_err(|_| ApiError::bad_request("Upgrade request required: exec is served over WebSocket (v5.channel.k8s.io, v4.channel.k8s.io) only"))?;
    let ws = ws
        .protocols(["v5.channel.k8s.io", "v4.channel.k8s.io"])
        .max_message_size(64 << 20);
    let v5 = ws
        .selected_protocol()
        .is_some_and(|p| p.as_bytes() == b"v5.channel.k8s.io");
    let mounts = mounts(&server, &pod, &container);
    let pod_dir = server
        .state
        .runtime
        .data_dir
        .join("pods")
        .join(meta_str(&pod, "uid"))
        .join("root");
    let _ = std::fs::create_dir_all(&pod_dir);
    let workdir = container
        .get("workingDir")
        .and_then(Value::as_str)
        .map(|w| PathBuf::from(rewrite_arg(w, &mounts)))
        .filter(|p| p.is_dir())
        .unwrap_or(pod_dir);
    let mut args: Vec<String> = req
        .command
        .iter()
        .map(|a| rewrite_arg(a, &mounts))
        .collect();
    if let Some(refusal) = busybox_refusal(str_at(&container, "/image"), &req.command) {
        args = [
            "sh",
            "-c",
            "printf '%s\\n' \"$1\" >&2; exit 1",
            "sh",
            &refusal,
        ]
        .map(String::from)
        .to_vec();
    }
    let env: Vec<(String, String)> = container
        .get("env")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|e| {
            Some((
                str_at(e, "/name").to_string(),
                e.get("value")?.as_str()?.to_string(),
            ))
        })
        .collect();
    let drop_after = server.faults.drop_exec_after();
    let cancel = server.cancel.clone();
    let (ns, name) = (ns.to_string(), name.to_string());
    Ok(ws.on_upgrade(move |socket| async move {
        let record = server.execs.start(&ns, &name, &req.command);
        let exited = || server.execs.exited(record);
        tokio::select! {
            cut = run(socket, req, args, env, workdir, v5, drop_after, exited) => if cut {
                server.faults.count_injected();
            },
            _ = cancel.cancelled() => {}
        }
    }))
}

/// An exec session, as the audit of a cluster's exec requests has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecRecord {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod.
    pub pod: String,
    /// The command as asked for (before `/data` and the like are mapped).
    pub command: Vec<String>,
    /// When its process started, on the log's clock (one tick per event).
    pub started: u64,
    /// When its process was seen to exit (its status not yet sent), on the
    /// same clock; `None` while it runs, when it never started, or when the
    /// session was cut (an injected fault) before it exited.
    pub exited: Option<u64>,
}

/// The exec sessions of a simulated cluster, in the order they started.
#[derive(Debug, Default)]
pub struct ExecLog {
    inner: Mutex<(u64, Vec<ExecRecord>)>,
}

impl ExecLog {
    /// Records a session's start; returns its index.
    fn start(&self, namespace: &str, pod: &str, command: &[String]) -> usize {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.0 += 1;
        let started = g.0;
        g.1.push(ExecRecord {
            namespace: namespace.to_string(),
            pod: pod.to_string(),
            command: command.to_vec(),
            started,
            exited: None,
        });
        g.1.len() - 1
    }

    /// Records that the process of session `i` exited.
    fn exited(&self, i: usize) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.0 += 1;
        let now = g.0;
        if let Some(r) = g.1.get_mut(i) {
            r.exited = Some(now);
        }
    }

    /// Every session so far.
    pub fn records(&self) -> Vec<ExecRecord> {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .clone()
    }
}

/// GNU `tar` options that BusyBox's `tar` (1.35, 1.36) does not know: it
/// refuses them with "unrecognized option" and exit status 1. Checked
/// against Debian's busybox 1.35.0 (`--same-permissions` and `-p` it
/// accepts).
pub const BUSYBOX_TAR_REFUSES: &[&str] = &[
    "--sparse",
    "--blocking-factor",
    "--xattrs",
    "--acls",
    "--selinux",
    "--preserve-permissions",
    "--version",
];

/// What BusyBox's `tar` says to `command` in a container of `image`, when
/// the image is BusyBox's and `command` runs `tar` with an option it lacks.
fn busybox_refusal(image: &str, command: &[String]) -> Option<String> {
    let name = image.rsplit('/').next().unwrap_or(image);
    if !name.starts_with("busybox") || command.first().map(String::as_str) != Some("tar") {
        return None;
    }
    let bad = command[1..]
        .iter()
        .find(|a| BUSYBOX_TAR_REFUSES.contains(&a.split('=').next().unwrap_or(a)))?;
    Some(format!("tar: unrecognized option '{bad}'"))
}

/// Bytes a process's stdin and stdout pipes hold (Linux's default is 64 KiB):
/// a kubelet streams a container's output in large reads too, and the
/// simulator shares the machine with what it serves, so fewer, larger
/// messages leave more of it to them.
const PIPE_SIZE: usize = 1 << 20;

/// Grows a pipe to [`PIPE_SIZE`], where the system allows it (best effort:
/// a smaller pipe only means more, smaller messages).
fn widen_pipe(pipe: &impl std::os::fd::AsFd) {
    let _ = rustix::pipe::fcntl_setpipe_size(pipe, PIPE_SIZE);
}

/// The buffers one exec session's output is read into, each going back to
/// the pool once its message is sent: reading 1 GiB of `tar -c` output into
/// fresh allocations faulted in (and zeroed) a page at a time cost the
/// simulator a fifth of its CPU, on the cores what it serves shares.
#[derive(Clone, Default)]
struct BufferPool(Arc<Mutex<Vec<Vec<u8>>>>);

/// Buffers a pool keeps: the messages queued for the socket and the ones
/// being read and written.
const POOLED: usize = 8;

impl BufferPool {
    /// An empty buffer with room for a channel byte and a full pipe.
    fn take(&self) -> Vec<u8> {
        let mut buf = self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .unwrap_or_default();
        buf.clear();
        buf.reserve_exact(PIPE_SIZE + 1);
        buf
    }

    /// `buf` as a message; its memory comes back to the pool when the
    /// message is dropped.
    fn message(&self, buf: Vec<u8>) -> Bytes {
        Bytes::from_owner(Pooled {
            buf,
            pool: self.clone(),
        })
    }
}

/// A buffer lent out as a message's bytes.
struct Pooled {
    buf: Vec<u8>,
    pool: BufferPool,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let mut pool = self.pool.0.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < POOLED {
            pool.push(std::mem::take(&mut self.buf));
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn run(
    socket: WebSocket,
    req: Request,
    args: Vec<String>,
    env: Vec<(String, String)>,
    workdir: PathBuf,
    v5: bool,
    drop_after: Option<u64>,
    exited: impl FnOnce(),
) -> bool {
    let (mut sink, mut stream) = socket.split();
    let first = if req.stdout {
        1u8
    } else if req.stderr {
        2
    } else {
        3
    };
    if sink
        .send(Message::Binary(vec![first].into()))
        .await
        .is_err()
    {
        return false;
    }
    let mut cmd = tokio::process::Command::new(&args[0]);
    cmd.args(&args[1..])
        .current_dir(&workdir)
        .envs(env)
        .stdin(if req.stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(if req.stdout {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stderr(if req.stderr {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let msg = format!(
                "OCI runtime exec failed: exec failed: unable to start container process: exec: \"{}\": {e}: unknown",
                args[0]
            );
            let mut m = vec![3u8];
            m.extend_from_slice(status_failure(None, &msg).to_string().as_bytes());
            let _ = sink.send(Message::Binary(m.into())).await;
            let _ = sink
                .send(Message::Close(Some(CloseFrame {
                    code: 1000,
                    reason: "".into(),
                })))
                .await;
            return false;
        }
    };
    // Output chunks from both pipes to the single writer, each read straight
    // into its message (the channel byte, then the data).
    if let Some(p) = &child.stdout {
        widen_pipe(p);
    }
    if let Some(p) = &child.stdin {
        widen_pipe(p);
    }
    let (tx, mut rx) = mpsc::channel::<Bytes>(4);
    let pool = BufferPool::default();
    let mut readers = Vec::new();
    for (ch, pipe) in [
        (
            1u8,
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        ),
        (
            2u8,
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        ),
    ] {
        let Some(mut pipe) = pipe else { continue };
        let tx = tx.clone();
        let pool = pool.clone();
        readers.push(tokio::spawn(async move {
            loop {
                let mut buf = pool.take();
                buf.push(ch);
                match pipe.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        if tx.send(pool.message(buf)).await.is_err() {
                            break;
                        }
                    }
                }
            }
        }));
    }
    drop(tx);
    // stdin from the client.
    let mut stdin = child.stdin.take();
    let mut client_gone = false;
    let mut sent: u64 = 0;
    loop {
        tokio::select! {
            out = rx.recv() => match out {
                Some(m) => {
                    let len = m.len() as u64 - 1;
                    if let Some(limit) = drop_after && sent + len >= limit {
                        // An abrupt cut once `limit` bytes went out: no
                        // status, no close frame.
                        let keep = (limit.saturating_sub(sent) as usize).min(m.len() - 1);
                        if keep > 0 {
                            let _ = sink.send(Message::Binary(m.slice(..keep + 1))).await;
                        }
                        let _ = child.start_kill();
                        return true;
                    }
                    sent += len;
                    if sink.send(Message::Binary(m)).await.is_err() {
                        let _ = child.start_kill();
                        return false;
                    }
                }
                None => break,
            },
            msg = stream.next(), if !client_gone => match msg {
                Some(Ok(Message::Binary(b))) if !b.is_empty() => match b[0] {
                    0 => {
                        if let Some(s) = stdin.as_mut()
                            && s.write_all(&b[1..]).await.is_err()
                        {
                            stdin = None;
                        }
                    }
                    255 if v5 && b.get(1) == Some(&0) => {
                        if let Some(mut s) = stdin.take() {
                            let _ = s.shutdown().await;
                        }
                    }
                    _ => {}
                },
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                    client_gone = true;
                    stdin = None;
                }
                Some(Ok(_)) => {}
            },
        }
    }
    drop(stdin);
    for r in readers {
        let _ = r.await;
    }
    let waited = child.wait().await;
    exited();
    let status = match waited {
        Ok(s) if s.success() => json!({"metadata": {}, "status": "Success"}),
        Ok(s) => status_failure(Some(s.code().unwrap_or(128 + 9)), ""),
        Err(e) => status_failure(None, &e.to_string()),
    };
    if client_gone {
        return false;
    }
    let mut m = vec![3u8];
    m.extend_from_slice(status.to_string().as_bytes());
    let _ = sink.send(Message::Binary(m.into())).await;
    let _ = sink
        .send(Message::Close(Some(CloseFrame {
            code: 1000,
            reason: "".into(),
        })))
        .await;
    // Let the client answer the close (bounded).
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        while let Some(Ok(m)) = stream.next().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busybox_tar_refuses_gnu_options_and_nothing_else_does() {
        let cmd = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let create = cmd(&[
            "tar",
            "-c",
            "--sparse",
            "--numeric-owner",
            "-C",
            "/data",
            ".",
        ]);
        assert_eq!(
            busybox_refusal("docker.io/library/busybox:1.36", &create).as_deref(),
            Some("tar: unrecognized option '--sparse'")
        );
        assert!(busybox_refusal("busybox", &create).is_some());
        for image in [
            "docker.io/library/debian:12-slim",
            "registry.local/busybox-tools/x:1",
        ] {
            assert_eq!(busybox_refusal(image, &create), None, "{image}");
        }
        let extract = cmd(&[
            "tar",
            "-x",
            "--numeric-owner",
            "--same-permissions",
            "-f",
            "-",
        ]);
        assert_eq!(busybox_refusal("busybox:1.36", &extract), None);
        assert_eq!(
            busybox_refusal("busybox:1.36", &cmd(&["sh", "-c", "tar --sparse"])),
            None,
            "only a direct tar is checked"
        );
    }

    #[test]
    fn rewrites_paths_only_at_path_starts() {
        let m = vec![
            ("/data/sub".to_string(), PathBuf::from("/v/b")),
            ("/data".to_string(), PathBuf::from("/v/a")),
        ];
        assert_eq!(rewrite_arg("/data", &m), "/v/a");
        assert_eq!(rewrite_arg("cd /data && find .", &m), "cd /v/a && find .");
        assert_eq!(rewrite_arg("/data/x/y", &m), "/v/a/x/y");
        assert_eq!(rewrite_arg("/data/sub/f", &m), "/v/b/f");
        assert_eq!(rewrite_arg("/database", &m), "/database");
        assert_eq!(rewrite_arg("/srv/data", &m), "/srv/data");
        assert_eq!(rewrite_arg("--dir=/data", &m), "--dir=/v/a");
        assert_eq!(rewrite_arg("'/data'", &m), "'/v/a'");
        assert_eq!(rewrite_arg("/data.bak", &m), "/data.bak");
    }
}
