//! The detector's UDP sockets: bound once by the supervisor and kept for the life of the pipeline, so that a
//! restarting receiver finds the datagrams that arrived meanwhile queued in the kernel.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::OwnedFd;

use anyhow::Context;

use crate::config::Config;

/// Binds one socket per stream (sector) the pipeline takes (every stream of the detector format, or the
/// configured `sectors`) at `bind:port_base + s`, in stream order, with large receive buffers and, if
/// configured, the multicast group joined. Datagrams for the other streams' ports are not received here.
pub fn bind_sector_sockets(cfg: &Config) -> anyhow::Result<Vec<OwnedFd>> {
    let view = cfg.view()?;
    let mut out = Vec::with_capacity(view.streams());
    for s in view.subset().iter() {
        let port = cfg.port_base + s as u16;
        let bind_ip: IpAddr = match (cfg.multicast_group, cfg.bind) {
            // Bind multicast receivers to the group (or any) so that only its traffic arrives.
            (Some(g), IpAddr::V4(b)) if b.is_unspecified() => g.into(),
            _ => cfg.bind,
        };
        let sock = UdpSocket::bind(SocketAddr::new(bind_ip, port))
            .with_context(|| format!("binding UDP {bind_ip}:{port} for sector {s}"))?;
        sock.set_nonblocking(true)?;
        let fd = OwnedFd::from(sock);
        use rustix::net::sockopt;
        if sockopt::set_socket_recv_buffer_size_force(&fd, cfg.recv_buffer_bytes).is_err() {
            sockopt::set_socket_recv_buffer_size(&fd, cfg.recv_buffer_bytes)
                .with_context(|| format!("SO_RCVBUF on sector {s}"))?;
        }
        let got = sockopt::socket_recv_buffer_size(&fd).unwrap_or(0);
        if got < cfg.recv_buffer_bytes {
            tracing::warn!(
                sector = s,
                wanted = cfg.recv_buffer_bytes,
                got,
                "receive buffer capped by net.core.rmem_max"
            );
        }
        if let Some(group) = cfg.multicast_group {
            sockopt::set_ip_add_membership(&fd, &group, &cfg.multicast_interface)
                .with_context(|| format!("joining multicast group {group} on sector {s}"))?;
        }
        out.push(fd);
    }
    Ok(out)
}
