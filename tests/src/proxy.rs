//! A TCP proxy a test puts in front of a store, to take the store away and bring it back
//! without touching the shared server.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, Result};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Forwards connections on a loopback port to `target`.
///
/// [`TcpProxy::cut`] closes every forwarded connection and stops listening, so new
/// connections are refused as by a store that is down; [`TcpProxy::restore`] listens again on
/// the same port. Dropping the proxy closes everything.
pub struct TcpProxy {
    addr: SocketAddr,
    up: watch::Sender<bool>,
    server: JoinHandle<()>,
}

impl TcpProxy {
    /// Starts forwarding a free loopback port to `target`.
    pub async fn start(target: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("while binding the proxy")?;
        let addr = listener
            .local_addr()
            .context("while reading the proxy's address")?;
        let (up, watching) = watch::channel(true);
        let server = tokio::spawn(serve(listener, addr, target, watching));
        Ok(Self { addr, up, server })
    }

    /// Starts forwarding to the host and port of a URL such as `postgres://u@127.0.0.1:5432/db`.
    pub async fn for_url(url: &str) -> Result<Self> {
        Self::start(host_port(url)?).await
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `url` with its host and port replaced by the proxy's.
    pub fn url_through(&self, url: &str) -> Result<String> {
        let (scheme, rest) = url.split_once("://").context("a URL with a scheme")?;
        let at = rest.rfind('@').map_or(0, |i| i + 1);
        let end = rest[at..].find(['/', '?']).map_or(rest.len(), |i| at + i);
        Ok(format!(
            "{scheme}://{}{}{}",
            &rest[..at],
            self.addr,
            &rest[end..]
        ))
    }

    /// Takes the store away: open connections are closed, new ones refused.
    pub fn cut(&self) {
        self.up.send_replace(false);
    }

    /// Brings the store back on the same address.
    pub fn restore(&self) {
        self.up.send_replace(true);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.server.abort();
        // Dropping the sender ends every forwarding task.
    }
}

/// The socket address of a URL's authority.
fn host_port(url: &str) -> Result<SocketAddr> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let at = rest.rfind('@').map_or(0, |i| i + 1);
    let end = rest[at..].find(['/', '?']).map_or(rest.len(), |i| at + i);
    let authority = &rest[at..end];
    let authority = authority.replace("localhost", "127.0.0.1");
    authority
        .parse()
        .with_context(|| format!("`{authority}` is not an IP address and port"))
}

async fn serve(
    first: TcpListener,
    addr: SocketAddr,
    target: SocketAddr,
    mut up: watch::Receiver<bool>,
) {
    let mut listener = Some(first);
    loop {
        if !*up.borrow_and_update() {
            listener = None;
            if up.changed().await.is_err() {
                return;
            }
            continue;
        }
        let current = match listener.take() {
            Some(listener) => listener,
            None => match rebind(addr).await {
                Some(listener) => listener,
                None => return,
            },
        };
        loop {
            tokio::select! {
                accepted = current.accept() => {
                    if let Ok((client, _)) = accepted {
                        tokio::spawn(forward(client, target, up.clone()));
                    }
                }
                changed = up.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    if !*up.borrow_and_update() {
                        break;
                    }
                }
            }
        }
        // Dropping the listener makes the port refuse connections until restored.
        drop(current);
    }
}

async fn rebind(addr: SocketAddr) -> Option<TcpListener> {
    for _ in 0..100 {
        let bound = TcpSocket::new_v4().and_then(|socket| {
            socket.set_reuseaddr(true)?;
            socket.bind(addr)?;
            socket.listen(1024)
        });
        match bound {
            Ok(listener) => return Some(listener),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    None
}

async fn forward(mut client: TcpStream, target: SocketAddr, mut up: watch::Receiver<bool>) {
    let Ok(mut server) = TcpStream::connect(target).await else {
        return;
    };
    let cut = async {
        while up.changed().await.is_ok() {
            if !*up.borrow_and_update() {
                return;
            }
        }
    };
    // On a cut both sockets are dropped: the client sees its connection end.
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        () = cut => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_rerouted_through_the_proxy_keeping_user_and_path() {
        assert_eq!(
            host_port("postgres://postgres@127.0.0.1:5432/db").unwrap(),
            "127.0.0.1:5432".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            host_port("http://localhost:9000").unwrap(),
            "127.0.0.1:9000".parse::<SocketAddr>().unwrap()
        );
    }
}
