//! A TCP relay on loopback whose connections a test can cut ([`TcpRelay`]): what a network
//! or a server that drops connections does to a client, without stopping the server.

use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

/// Relays every connection made to [`TcpRelay::addr`] to a target address, each on two
/// threads of its own, until [`TcpRelay::cut`] or drop.
pub struct TcpRelay {
    addr: SocketAddr,
    live: Arc<Mutex<Vec<TcpStream>>>,
    accepted: Arc<AtomicUsize>,
    stopping: Arc<AtomicBool>,
    acceptor: Option<thread::JoinHandle<()>>,
}

impl TcpRelay {
    /// Listens on a free loopback port and relays to `target`.
    pub fn start(target: SocketAddr) -> io::Result<TcpRelay> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let live = Arc::new(Mutex::new(Vec::new()));
        let accepted = Arc::new(AtomicUsize::new(0));
        let stopping = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let (live, accepted, stopping) = (live.clone(), accepted.clone(), stopping.clone());
            thread::Builder::new()
                .name("tcp-relay".into())
                .spawn(move || accept_loop(listener, target, &live, &accepted, &stopping))?
        };
        Ok(TcpRelay {
            addr,
            live,
            accepted,
            stopping,
            acceptor: Some(acceptor),
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many connections it has accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Shuts every live connection down, both ways and both sides (the client sees its
    /// connection closed; the target sees its peer go); new connections are relayed as
    /// before. Returns how many it cut.
    pub fn cut(&self) -> usize {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        for stream in live.iter() {
            let _ = stream.shutdown(Shutdown::Both);
        }
        let cut = live.len() / 2;
        live.clear();
        cut
    }
}

impl Drop for TcpRelay {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        // Wakes the acceptor, which then sees `stopping`.
        let _ = TcpStream::connect(self.addr);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        self.cut();
    }
}

fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    live: &Arc<Mutex<Vec<TcpStream>>>,
    accepted: &AtomicUsize,
    stopping: &AtomicBool,
) {
    for client in listener.incoming() {
        if stopping.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else { continue };
        let Ok(server) = TcpStream::connect(target) else {
            continue;
        };
        let _ = (client.set_nodelay(true), server.set_nodelay(true));
        let clones = (client.try_clone(), server.try_clone());
        let (Ok(client_in), Ok(server_in)) = clones else {
            continue;
        };
        accepted.fetch_add(1, Ordering::SeqCst);
        {
            let mut live = live.lock().unwrap_or_else(|p| p.into_inner());
            if let (Ok(c), Ok(s)) = (client.try_clone(), server.try_clone()) {
                live.push(c);
                live.push(s);
            }
        }
        copy_on_thread(client_in, server);
        copy_on_thread(server_in, client);
    }
}

/// Copies `from` to `to` until either ends, then shuts `to`'s writing side.
fn copy_on_thread(mut from: TcpStream, mut to: TcpStream) {
    let _ = thread::Builder::new()
        .name("tcp-relay-copy".into())
        .spawn(move || {
            let _ = io::copy(&mut from, &mut to);
            let _ = to.shutdown(Shutdown::Write);
        });
}
