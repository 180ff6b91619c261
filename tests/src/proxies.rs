//! Minimal outbound proxies for tests: HTTP CONNECT and SOCKS5 (no auth),
//! each recording the targets it tunnelled to.
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A running test proxy.
pub struct TestProxy {
    pub addr: SocketAddr,
    targets: Arc<Mutex<Vec<String>>>,
    credentials: Arc<Mutex<Vec<Option<String>>>>,
}

impl TestProxy {
    /// `host:port` of every tunnel opened so far.
    pub fn targets(&self) -> Vec<String> {
        self.targets.lock().expect("proxy lock").clone()
    }

    /// `Proxy-Authorization` of every CONNECT (HTTP proxy only).
    pub fn credentials(&self) -> Vec<Option<String>> {
        self.credentials.lock().expect("proxy lock").clone()
    }

    pub async fn http_connect() -> TestProxy {
        Self::start(Kind::Http).await
    }

    pub async fn socks5() -> TestProxy {
        Self::start(Kind::Socks5).await
    }

    async fn start(kind: Kind) -> TestProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let targets: Arc<Mutex<Vec<String>>> = Arc::default();
        let credentials: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
        let (t, c) = (targets.clone(), credentials.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (t, c) = (t.clone(), c.clone());
                tokio::spawn(async move {
                    let _ = match kind {
                        Kind::Http => http_tunnel(client, t, c).await,
                        Kind::Socks5 => socks_tunnel(client, t).await,
                    };
                });
            }
        });
        TestProxy {
            addr,
            targets,
            credentials,
        }
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Http,
    Socks5,
}

async fn http_tunnel(
    mut client: TcpStream,
    targets: Arc<Mutex<Vec<String>>>,
    credentials: Arc<Mutex<Vec<Option<String>>>>,
) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if client.read(&mut byte).await? == 0 {
            return Ok(());
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut lines = head.lines();
    let target = lines
        .next()
        .and_then(|l| l.strip_prefix("CONNECT "))
        .and_then(|l| l.split(' ').next())
        .unwrap_or_default()
        .to_string();
    let auth = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("proxy-authorization"))
        .map(|(_, v)| v.trim().to_string());
    credentials.lock().expect("proxy lock").push(auth);
    targets.lock().expect("proxy lock").push(target.clone());
    let mut upstream = TcpStream::connect(&target).await?;
    client
        .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        .await?;
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    Ok(())
}

async fn socks_tunnel(
    mut client: TcpStream,
    targets: Arc<Mutex<Vec<String>>>,
) -> std::io::Result<()> {
    let mut greeting = [0u8; 2];
    client.read_exact(&mut greeting).await?;
    let mut methods = vec![0u8; greeting[1] as usize];
    client.read_exact(&mut methods).await?;
    client.write_all(&[5, 0]).await?;
    let mut request = [0u8; 4];
    client.read_exact(&mut request).await?;
    let host = match request[3] {
        1 => {
            let mut ip = [0u8; 4];
            client.read_exact(&mut ip).await?;
            std::net::Ipv4Addr::from(ip).to_string()
        }
        3 => {
            let mut len = [0u8; 1];
            client.read_exact(&mut len).await?;
            let mut name = vec![0u8; len[0] as usize];
            client.read_exact(&mut name).await?;
            String::from_utf8_lossy(&name).into_owned()
        }
        _ => {
            let mut ip = [0u8; 16];
            client.read_exact(&mut ip).await?;
            format!("[{}]", std::net::Ipv6Addr::from(ip))
        }
    };
    let mut port = [0u8; 2];
    client.read_exact(&mut port).await?;
    let target = format!("{host}:{}", u16::from_be_bytes(port));
    targets.lock().expect("proxy lock").push(target.clone());
    let mut upstream = TcpStream::connect(&target).await?;
    client.write_all(&[5, 0, 0, 1, 0, 0, 0, 0, 0, 0]).await?;
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    Ok(())
}
