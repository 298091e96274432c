//! An in-process S3 server (s3s + s3s-fs) on 127.0.0.1 for tests. Shared by
//! path with `steps/tests`.
#![allow(dead_code, missing_docs)]

use std::fs;
use std::path::{Path, PathBuf};

/// An S3 server (s3s + s3s-fs) on 127.0.0.1 serving `root`; bucket `ferry`.
pub struct S3Server {
    pub endpoint: String,
    pub root: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub const S3_BUCKET: &str = "ferry";

pub async fn start_s3(root: &Path) -> anyhow::Result<S3Server> {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto::Builder as ConnBuilder;
    use s3s::auth::SimpleAuth;
    use s3s::service::S3ServiceBuilder;

    fs::create_dir_all(root.join(S3_BUCKET))?;
    let fs = s3s_fs::FileSystem::new(root).map_err(|e| anyhow::anyhow!("s3s-fs: {e:?}"))?;
    let mut b = S3ServiceBuilder::new(fs);
    b.set_auth(SimpleAuth::from_single("ferry-test", "ferry-test-secret"));
    let service = b.build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let http = ConnBuilder::new(TokioExecutor::new());
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                continue;
            };
            let conn = http
                .serve_connection(TokioIo::new(socket), service.clone())
                .into_owned();
            tokio::spawn(async move {
                let _ = conn.await;
            });
        }
    });
    Ok(S3Server {
        endpoint: format!("http://{addr}"),
        root: root.to_path_buf(),
        task,
    })
}

pub fn s3_options(server: &S3Server) -> Vec<(String, String)> {
    [
        ("aws_endpoint", server.endpoint.as_str()),
        ("aws_allow_http", "true"),
        ("aws_virtual_hosted_style_request", "false"),
        ("aws_access_key_id", "ferry-test"),
        ("aws_secret_access_key", "ferry-test-secret"),
        ("aws_region", "us-east-1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}
