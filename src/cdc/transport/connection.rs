//! Opening a replication session: the socket, the startup message, authentication, and
//! simple queries on it.

use std::time::Duration;

use bytes::{Buf, BytesMut};
use postgres_protocol::authentication::sasl::{
    ChannelBinding, ScramSha256, SCRAM_SHA_256, SCRAM_SHA_256_PLUS,
};
use postgres_protocol::message::backend::{ErrorFields, Header, Message};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::read_batching::{ReadBatching, ReadCounts, BATCH_WAIT};
use super::TransportError;
use crate::pg_connect::tls::{self, Negotiated};
use crate::pg_connect::{PgDsn, SslMode, TlsSettings};

/// Bytes asked of the socket per read (one read usually carries many XLogData frames).
const READ_CHUNK: usize = 128 * 1024;
/// Largest message accepted from the server (its own limit is 1 GiB, plus framing).
const MAX_MESSAGE: usize = (1 << 30) + 64;
/// The `CopyBothResponse` tag, which `postgres-protocol`'s parser does not know.
const COPY_BOTH_RESPONSE: u8 = b'W';

/// Where and as whom to connect, from a libpq connection string (key=value or URL).
#[derive(Clone)]
pub struct SourceAddress {
    host: Host,
    port: u16,
    user: String,
    password: Option<Vec<u8>>,
    database: String,
    application_name: String,
    connect_timeout: Option<Duration>,
    receive_buffer: ReceiveBuffer,
    tls: TlsSettings,
    channel_binding: tokio_postgres::config::ChannelBinding,
}

/// The receive buffer of a replication session's TCP socket (a Unix-domain socket keeps
/// the system's).
///
/// The walsender writes every pgoutput message with a `send()` of its own; on loopback
/// TCP each one carries the receiver's TCP input processing in the sender's context. A
/// receiver that keeps a large window empties the socket after every few messages, so the
/// walsender sends them one by one; with a small window its sends queue up and go out
/// together. On loopback 64 KiB took CPU per row off both the walsender and our process
/// and caught up faster (measured in `benches/HISTORY.md`). Over a network a small window would
/// cap the stream at window ÷ round trip (64 KiB over 10 ms: 6.4 MB/s), so only a
/// loopback source gets one unless the job says otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReceiveBuffer {
    /// [`LOOPBACK_RECEIVE_BUFFER`] when the source's address is a loopback one, the
    /// system's autotuning otherwise.
    #[default]
    Auto,
    /// The system's autotuning.
    System,
    /// This many bytes (Linux doubles it for its bookkeeping, and turns autotuning off).
    Bytes(u32),
}

/// The receive buffer [`ReceiveBuffer::Auto`] gives a loopback source.
pub const LOOPBACK_RECEIVE_BUFFER: u32 = 64 * 1024;

impl ReceiveBuffer {
    /// The size to set on a socket to `ip`; `None`: leave the system's.
    pub fn bytes_for(self, ip: std::net::IpAddr) -> Option<u32> {
        match self {
            ReceiveBuffer::Auto => ip.is_loopback().then_some(LOOPBACK_RECEIVE_BUFFER),
            ReceiveBuffer::System => None,
            ReceiveBuffer::Bytes(n) => Some(n),
        }
    }
}

/// Connects to the first of `host`'s addresses that answers, with the receive buffer
/// `buffer` asks for that address set before the connection opens (the window scale
/// is agreed then).
async fn connect_tcp(
    host: &str,
    port: u16,
    buffer: ReceiveBuffer,
) -> std::io::Result<tokio::net::TcpStream> {
    let mut last = None;
    for addr in tokio::net::lookup_host((host, port)).await? {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        if let Some(bytes) = buffer.bytes_for(addr.ip()) {
            socket.set_recv_buffer_size(bytes)?;
        }
        match socket.connect(addr).await {
            Ok(stream) => return Ok(stream),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{host} resolves to no address"),
        )
    }))
}

#[derive(Debug, Clone)]
enum Host {
    Tcp(String),
    Unix(std::path::PathBuf),
}

impl std::fmt::Debug for SourceAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceAddress")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("database", &self.database)
            .finish()
    }
}

impl SourceAddress {
    /// Reads the parts a replication session needs from `dsn`.
    pub fn from_dsn(dsn: &str, application_name: &str) -> Result<SourceAddress, TransportError> {
        let PgDsn { config: cfg, tls } =
            PgDsn::parse(dsn).map_err(|e| TransportError::Config(e.to_string()))?;
        let host = match cfg.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => Host::Tcp(h.clone()),
            Some(tokio_postgres::config::Host::Unix(p)) => Host::Unix(p.clone()),
            None => Host::Tcp("localhost".to_string()),
        };
        let user = cfg
            .get_user()
            .ok_or_else(|| TransportError::Config("no user given".into()))?
            .to_string();
        Ok(SourceAddress {
            host,
            port: cfg.get_ports().first().copied().unwrap_or(5432),
            password: cfg.get_password().map(<[u8]>::to_vec),
            database: cfg.get_dbname().unwrap_or(&user).to_string(),
            user,
            application_name: application_name.to_string(),
            connect_timeout: cfg.get_connect_timeout().copied(),
            receive_buffer: ReceiveBuffer::Auto,
            tls,
            channel_binding: cfg.get_channel_binding(),
        })
    }

    /// The same address with the socket's receive buffer set as `buffer` says.
    pub fn with_receive_buffer(mut self, buffer: ReceiveBuffer) -> SourceAddress {
        self.receive_buffer = buffer;
        self
    }
}

trait Socket: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Socket for T {}

/// An authenticated session in logical replication mode, ready for replication commands.
pub struct ReplicationConnection {
    socket: Box<dyn Socket>,
    read: BytesMut,
    write: BytesMut,
    /// Major version of the server (`server_version` parameter), 0 when not reported.
    server_major: u32,
    /// Batched reads of a TCP socket (`read_batching`).
    batching: ReadBatching,
}

impl ReplicationConnection {
    /// Connects and logs in with `replication=database`. With `sslmode=allow`, a plain
    /// session first, and TLS when the server refuses it (as libpq).
    pub async fn connect(address: &SourceAddress) -> Result<ReplicationConnection, TransportError> {
        let opened = async {
            let plain_first = address.tls.mode.plain_first();
            match Self::open(address, !plain_first).await {
                Err(e @ (TransportError::Auth(_) | TransportError::Server { .. }))
                    if address.tls.mode == SslMode::Allow
                        && matches!(address.host, Host::Tcp(_)) =>
                {
                    tracing::info!(error = %e,
                        "the server refused a plain replication session; trying TLS (sslmode=allow)");
                    Self::open(address, true).await
                }
                other => other,
            }
        };
        match address.connect_timeout {
            Some(limit) => tokio::time::timeout(limit, opened)
                .await
                .map_err(|_| TransportError::Timeout(limit))?,
            None => opened.await,
        }
    }

    /// Opens a socket, asks for TLS when `ask_tls` (as `address.tls` says: refused, or a
    /// plain session, when the server declines), and logs in.
    async fn open(
        address: &SourceAddress,
        ask_tls: bool,
    ) -> Result<ReplicationConnection, TransportError> {
        // The TLS session's channel binding, for SCRAM-SHA-256-PLUS.
        let mut end_point = None;
        let mut tcp_fd = None;
        let socket: Box<dyn Socket> = match &address.host {
            Host::Tcp(host) => {
                let s = connect_tcp(host, address.port, address.receive_buffer).await?;
                // Status updates are small writes that must not wait for more.
                s.set_nodelay(true)?;
                tcp_fd = Some(std::os::fd::AsRawFd::as_raw_fd(&s));
                if !ask_tls {
                    Box::new(s)
                } else {
                    match tls::negotiate(s, host, &address.tls).await? {
                        Negotiated::Plain(s) => Box::new(s),
                        Negotiated::Tls {
                            stream,
                            end_point: e,
                        } => {
                            end_point = e;
                            Box::new(stream)
                        }
                    }
                }
            }
            // The server never offers TLS on its Unix-domain socket.
            Host::Unix(_) if address.tls.mode.requires_tls() => {
                return Err(tls::TlsError::UnixSocket(address.tls.mode.name()).into())
            }
            Host::Unix(dir) => Box::new(
                tokio::net::UnixStream::connect(dir.join(format!(".s.PGSQL.{}", address.port)))
                    .await?,
            ),
        };
        let mut conn = ReplicationConnection {
            socket,
            read: BytesMut::with_capacity(READ_CHUNK),
            write: BytesMut::new(),
            server_major: 0,
            batching: ReadBatching::new(tcp_fd),
        };
        conn.start_up(address, end_point).await?;
        Ok(conn)
    }

    /// The server's major version (15 for 15.4), 0 when it did not say.
    pub fn server_major(&self) -> u32 {
        self.server_major
    }

    /// Logs in; `end_point` is the TLS session's channel binding, if there is one.
    async fn start_up(
        &mut self,
        address: &SourceAddress,
        end_point: Option<Vec<u8>>,
    ) -> Result<(), TransportError> {
        use tokio_postgres::config::ChannelBinding as Binding;
        let binding_required = address.channel_binding == Binding::Require;
        let mut bound = false;
        let options = crate::pg_connect::startup_options();
        let params = [
            ("user", address.user.as_str()),
            ("database", address.database.as_str()),
            ("replication", "database"),
            ("client_encoding", "UTF8"),
            ("application_name", address.application_name.as_str()),
            ("options", options.as_str()),
        ];
        frontend::startup_message(params.iter().copied(), &mut self.write)?;
        self.flush().await?;
        let password = || {
            address.password.as_deref().ok_or_else(|| {
                TransportError::Auth(
                    "the server asks for a password and source.dsn has none".into(),
                )
            })
        };
        let mut scram: Option<ScramSha256> = None;
        loop {
            match self.next_message().await? {
                Message::AuthenticationOk if binding_required && !bound => {
                    return Err(TransportError::Auth(
                        "channel_binding=require, but the server logged us in without channel binding".into(),
                    ))
                }
                Message::AuthenticationOk => {}
                Message::AuthenticationCleartextPassword => {
                    frontend::password_message(password()?, &mut self.write)?;
                    self.flush().await?;
                }
                Message::AuthenticationMd5Password(body) => {
                    let hashed = postgres_protocol::authentication::md5_hash(
                        address.user.as_bytes(),
                        password()?,
                        body.salt(),
                    );
                    frontend::password_message(hashed.as_bytes(), &mut self.write)?;
                    self.flush().await?;
                }
                Message::AuthenticationSasl(body) => {
                    let mut mechanisms = body.mechanisms();
                    let (mut plain, mut plus) = (false, false);
                    while let Some(m) = fallible_iterator::FallibleIterator::next(&mut mechanisms)?
                    {
                        plain |= m == SCRAM_SHA_256;
                        plus |= m == SCRAM_SHA_256_PLUS;
                    }
                    let wants_binding = address.channel_binding != Binding::Disable;
                    // As libpq: bind when both can; say "y" (we could, the server cannot)
                    // when only we can, so a stripped offer is detected by the server.
                    let (mechanism, binding) = match (&end_point, plus && wants_binding) {
                        (Some(hash), true) => (
                            SCRAM_SHA_256_PLUS,
                            ChannelBinding::tls_server_end_point(hash.clone()),
                        ),
                        (Some(_), false) if wants_binding => {
                            (SCRAM_SHA_256, ChannelBinding::unrequested())
                        }
                        _ => (SCRAM_SHA_256, ChannelBinding::unsupported()),
                    };
                    if binding_required && mechanism != SCRAM_SHA_256_PLUS {
                        return Err(TransportError::Auth(
                            "channel_binding=require, but SCRAM-SHA-256-PLUS cannot be used (it needs TLS and a server offering it)".into(),
                        ));
                    }
                    if !(plain || mechanism == SCRAM_SHA_256_PLUS) {
                        return Err(TransportError::Auth(
                            "the server offers no SASL mechanism this client has (SCRAM-SHA-256)"
                                .into(),
                        ));
                    }
                    bound = mechanism == SCRAM_SHA_256_PLUS;
                    let s = ScramSha256::new(password()?, binding);
                    frontend::sasl_initial_response(mechanism, s.message(), &mut self.write)?;
                    self.flush().await?;
                    scram = Some(s);
                }
                Message::AuthenticationSaslContinue(body) => {
                    let s = scram.as_mut().ok_or_else(|| {
                        TransportError::Protocol("SASL continue before SASL start".into())
                    })?;
                    s.update(body.data())
                        .map_err(|e| TransportError::Auth(format!("SCRAM: {e}")))?;
                    frontend::sasl_response(s.message(), &mut self.write)?;
                    self.flush().await?;
                }
                Message::AuthenticationSaslFinal(body) => {
                    let s = scram.as_mut().ok_or_else(|| {
                        TransportError::Protocol("SASL final before SASL start".into())
                    })?;
                    s.finish(body.data())
                        .map_err(|e| TransportError::Auth(format!("SCRAM: {e}")))?;
                }
                Message::ParameterStatus(p) => {
                    if p.name()? == "server_version" {
                        self.server_major = major_version(p.value()?);
                    }
                }
                Message::BackendKeyData(_) | Message::NoticeResponse(_) => {}
                Message::ReadyForQuery(_) => return Ok(()),
                Message::ErrorResponse(body) => {
                    let err = server_error(body.fields())?;
                    return Err(match err {
                        // invalid_authorization_specification, invalid_password
                        TransportError::Server { code, message } if code.starts_with("28") => {
                            TransportError::Auth(message)
                        }
                        other => other,
                    });
                }
                Message::AuthenticationKerberosV5
                | Message::AuthenticationScmCredential
                | Message::AuthenticationGss
                | Message::AuthenticationGssContinue(_)
                | Message::AuthenticationSspi => {
                    return Err(TransportError::Auth(
                        "the server asks for an authentication method this client does not have (trust, password, md5 and SCRAM-SHA-256 are supported)".into(),
                    ))
                }
                _ => {
                    return Err(TransportError::Protocol(
                        "unexpected message during start-up".into(),
                    ))
                }
            }
        }
    }

    /// Runs one command with the simple query protocol; returns its rows as text. A server
    /// error is returned once the session is ready for the next command.
    pub async fn simple_query(
        &mut self,
        sql: &str,
    ) -> Result<Vec<Vec<Option<String>>>, TransportError> {
        frontend::query(sql, &mut self.write)?;
        self.flush().await?;
        let mut rows = Vec::new();
        let mut failed = None;
        loop {
            match self.next_message().await? {
                Message::DataRow(row) => {
                    let mut values = Vec::new();
                    let mut ranges = row.ranges();
                    while let Some(range) = fallible_iterator::FallibleIterator::next(&mut ranges)?
                    {
                        values.push(
                            range.map(|r| String::from_utf8_lossy(&row.buffer()[r]).into_owned()),
                        );
                    }
                    rows.push(values);
                }
                Message::ErrorResponse(body) => failed = Some(server_error(body.fields())?),
                Message::ReadyForQuery(_) => {
                    return match failed {
                        Some(e) => Err(e),
                        None => Ok(rows),
                    }
                }
                _ => {}
            }
        }
    }

    /// Sends `sql` (a `START_REPLICATION`) and waits for the copy-both response.
    pub(super) async fn start_copy_both(&mut self, sql: &str) -> Result<(), TransportError> {
        frontend::query(sql, &mut self.write)?;
        self.flush().await?;
        loop {
            if let Some(header) = Header::parse(&self.read)? {
                if header.tag() == COPY_BOTH_RESPONSE {
                    let total = header.len() as usize + 1;
                    if self.read.len() >= total {
                        self.read.advance(total);
                        return Ok(());
                    }
                    self.fill().await?;
                    continue;
                }
            }
            match self.try_message()? {
                Some(Message::ErrorResponse(body)) => {
                    let err = server_error(body.fields())?;
                    // The session is ready again after an error; its caller drops it.
                    return Err(err);
                }
                Some(_) => {}
                None => self.fill().await?,
            }
        }
    }

    /// The next complete backend message, reading as needed.
    pub(super) async fn next_message(&mut self) -> Result<Message, TransportError> {
        loop {
            if let Some(m) = self.try_message()? {
                return Ok(m);
            }
            self.fill().await?;
        }
    }

    /// A message already in the read buffer, if one is complete. Cancellation safe: only
    /// [`fill`](Self::fill) awaits.
    pub(super) fn try_message(&mut self) -> Result<Option<Message>, TransportError> {
        // Unparseable bytes are a damaged stream, not a socket error to retry.
        let damaged = |e: std::io::Error| TransportError::Protocol(e.to_string());
        if let Some(header) = Header::parse(&self.read).map_err(damaged)? {
            if header.tag() == COPY_BOTH_RESPONSE {
                return Err(TransportError::Protocol(
                    "a second copy-both response".into(),
                ));
            }
            // The server never sends more than 1 GiB in one message (its allocation
            // limit): a larger length is a damaged stream, not a reason to allocate it.
            if header.len() as usize > MAX_MESSAGE {
                return Err(TransportError::Protocol(format!(
                    "a message of {} bytes (tag {:?}), larger than any the server sends",
                    header.len(),
                    char::from(header.tag())
                )));
            }
        }
        Message::parse(&mut self.read).map_err(damaged)
    }

    /// Reads more bytes from the socket. Cancellation safe (no bytes are lost if the
    /// future is dropped); end of stream is [`TransportError::Closed`].
    pub(super) async fn fill(&mut self) -> Result<(), TransportError> {
        self.read.reserve(READ_CHUNK);
        let batched = self.batching.waits();
        let n = if batched {
            match tokio::time::timeout(BATCH_WAIT, self.socket.read_buf(&mut self.read)).await {
                Ok(n) => n?,
                Err(_) => {
                    self.batching.wait_ran_out();
                    self.socket.read_buf(&mut self.read).await?
                }
            }
        } else {
            self.socket.read_buf(&mut self.read).await?
        };
        if n == 0 {
            return Err(TransportError::Closed);
        }
        self.batching.read_done(batched, n);
        Ok(())
    }

    /// The batching of this connection's reads (`read_batching`).
    pub(super) fn batching(&mut self) -> &mut ReadBatching {
        &mut self.batching
    }

    /// How this connection's socket was read.
    pub(super) fn read_counts(&self) -> ReadCounts {
        self.batching.counts()
    }

    /// Queues a copy-data message carrying `payload`.
    pub(super) fn queue_copy_data(&mut self, payload: &[u8]) -> Result<(), TransportError> {
        frontend::CopyData::new(payload)?.write(&mut self.write);
        Ok(())
    }

    /// Queues a copy-done message.
    pub(super) fn queue_copy_done(&mut self) {
        frontend::copy_done(&mut self.write);
    }

    /// Queues a terminate message.
    pub(super) fn queue_terminate(&mut self) {
        frontend::terminate(&mut self.write);
    }

    /// Writes everything queued.
    pub(super) async fn flush(&mut self) -> Result<(), TransportError> {
        if !self.write.is_empty() {
            self.socket.write_all(&self.write).await?;
            self.socket.flush().await?;
            self.write.clear();
        }
        Ok(())
    }
}

/// `15` from `15.4 (Debian 15.4-1)`, `9` from `9.6.24`, 0 if unreadable.
fn major_version(text: &str) -> u32 {
    text.split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0)
}

/// An `ErrorResponse` as one line: severity, message, hint, SQLSTATE. DETAIL is left out:
/// it can quote row values.
pub(super) fn server_error(mut fields: ErrorFields<'_>) -> Result<TransportError, TransportError> {
    let (mut severity, mut code, mut message, mut hint) =
        (String::new(), String::new(), String::new(), None);
    while let Some(f) = fallible_iterator::FallibleIterator::next(&mut fields)? {
        let value = String::from_utf8_lossy(f.value_bytes()).into_owned();
        match f.type_() {
            b'V' => severity = value,
            b'S' if severity.is_empty() => severity = value,
            b'C' => code = value,
            b'M' => message = value,
            b'H' => hint = Some(value),
            _ => {}
        }
    }
    let mut line = format!("{severity}: {message}");
    if let Some(h) = hint {
        line.push_str(&format!("; hint: {h}"));
    }
    Ok(TransportError::Server {
        code,
        message: line,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_receive_buffer_only_for_loopback_unless_asked() {
        let (lo4, lo6) = ([127, 0, 0, 1].into(), std::net::Ipv6Addr::LOCALHOST.into());
        let remote: std::net::IpAddr = [10, 1, 2, 3].into();
        assert_eq!(
            ReceiveBuffer::Auto.bytes_for(lo4),
            Some(LOOPBACK_RECEIVE_BUFFER)
        );
        assert_eq!(
            ReceiveBuffer::Auto.bytes_for(lo6),
            Some(LOOPBACK_RECEIVE_BUFFER)
        );
        assert_eq!(ReceiveBuffer::Auto.bytes_for(remote), None);
        assert_eq!(ReceiveBuffer::System.bytes_for(lo4), None);
        assert_eq!(ReceiveBuffer::Bytes(4096).bytes_for(remote), Some(4096));
    }

    /// `SO_RCVBUF` of a connected socket, as the kernel reports it.
    fn receive_buffer_of(stream: &tokio::net::TcpStream) -> usize {
        use std::os::fd::AsRawFd;
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: a valid socket descriptor and an out-parameter of the size given.
        let rc = unsafe {
            libc::getsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&mut value as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0, "getsockopt");
        value as usize
    }

    #[tokio::test]
    async fn the_receive_buffer_asked_for_is_set_before_connecting() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("address").port();
        let small = connect_tcp("127.0.0.1", port, ReceiveBuffer::Bytes(16 * 1024))
            .await
            .expect("connect");
        // Linux doubles the size asked for (room for its bookkeeping).
        assert!(
            (16 * 1024..=32 * 1024).contains(&receive_buffer_of(&small)),
            "{}",
            receive_buffer_of(&small)
        );
        let large = connect_tcp("127.0.0.1", port, ReceiveBuffer::Bytes(192 * 1024))
            .await
            .expect("connect");
        assert!(receive_buffer_of(&large) >= 192 * 1024);
        let err = connect_tcp("127.0.0.1", 1, ReceiveBuffer::Auto)
            .await
            .expect_err("nothing listens on port 1");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    }

    #[test]
    fn major_version_reads_the_leading_number() {
        assert_eq!(major_version("15.4 (Debian 15.4-1.pgdg120+1)"), 15);
        assert_eq!(major_version("16beta1"), 16);
        assert_eq!(major_version("9.6.24"), 9);
        assert_eq!(major_version("devel"), 0);
    }

    #[test]
    fn addresses_come_from_both_dsn_forms_and_never_print_the_password() {
        let a = SourceAddress::from_dsn(
            "host=127.0.0.1 port=6543 user=repl password=hunter2 dbname=app",
            "helios-repl",
        )
        .unwrap();
        assert!(matches!(&a.host, Host::Tcp(h) if h == "127.0.0.1"));
        assert_eq!(
            (a.port, a.user.as_str(), a.database.as_str()),
            (6543, "repl", "app")
        );
        assert_eq!(a.password.as_deref(), Some(&b"hunter2"[..]));
        assert!(!format!("{a:?}").contains("hunter2"));
        let u = SourceAddress::from_dsn("postgresql://repl@%2Ftmp%2Fpg/app", "x").unwrap();
        assert!(matches!(&u.host, Host::Unix(p) if p == std::path::Path::new("/tmp/pg")));
        assert_eq!((u.port, u.database.as_str()), (5432, "app"));
        // No database: the user's name, as libpq does.
        let d = SourceAddress::from_dsn("host=h user=me", "x").unwrap();
        assert_eq!(d.database, "me");
    }

    #[test]
    fn unusable_dsns_are_named() {
        let err = SourceAddress::from_dsn("host=h dbname=app", "x").unwrap_err();
        assert_eq!(err.to_string(), "source.dsn: no user given");
        let err = SourceAddress::from_dsn("host=h user=u sslmode=on", "x").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("source.dsn: sslmode `on` is not one of"),
            "{err}"
        );
        let err = SourceAddress::from_dsn("host='unterminated", "x").unwrap_err();
        assert!(
            err.to_string().starts_with("source.dsn: cannot parse"),
            "{err}"
        );
    }

    /// A message length no server sends is refused before anything is allocated.
    #[tokio::test]
    async fn an_impossible_message_length_is_a_protocol_error() {
        let (ours, mut theirs) = tokio::io::duplex(64);
        let mut conn = ReplicationConnection {
            socket: Box::new(ours),
            read: BytesMut::new(),
            write: BytesMut::new(),
            server_major: 0,
            batching: ReadBatching::default(),
        };
        let mut frame = vec![b'd'];
        frame.extend_from_slice(&0x7FFF_FFF0u32.to_be_bytes());
        theirs.write_all(&frame).await.unwrap();
        let err = conn.next_message().await.err().unwrap();
        assert!(matches!(err, TransportError::Protocol(_)), "{err:?}");
        assert!(err.to_string().contains("2147483632 bytes"), "{err}");
        assert!(!err.is_transient());
        assert!(conn.read.capacity() < 1 << 20, "nothing large was reserved");
        // A negative length: damaged too, and not retried.
        conn.read.clear();
        let mut frame = vec![b'd'];
        frame.extend_from_slice(&u32::MAX.to_be_bytes());
        theirs.write_all(&frame).await.unwrap();
        let err = conn.next_message().await.err().unwrap();
        assert!(matches!(err, TransportError::Protocol(_)), "{err:?}");
    }

    #[tokio::test]
    async fn a_closed_port_is_a_transient_io_error() {
        let port = crate::embedded::pg_cluster::free_port().unwrap();
        let a =
            SourceAddress::from_dsn(&format!("host=127.0.0.1 port={port} user=u"), "x").unwrap();
        let err = ReplicationConnection::connect(&a).await.err().unwrap();
        assert!(matches!(err, TransportError::Io(_)), "{err:?}");
        assert!(err.is_transient());
    }
}

#[cfg(test)]
mod batching_tests {
    use std::time::Instant;

    use super::super::read_batching::{BATCH_BYTES, ENTER_LAG, SAMPLE_READS};
    use super::*;

    /// A copy-data message of `n` payload bytes.
    fn copy_data(n: usize) -> Vec<u8> {
        let mut frame = vec![b'd'];
        frame.extend_from_slice(&((n + 4) as u32).to_be_bytes());
        frame.extend(std::iter::repeat_n(b'x', n));
        frame
    }

    /// Small reads behind a backlog start batching; less than a batch is then taken after
    /// the wait, not held, and batching goes on; a whole batch is read at once.
    #[tokio::test]
    async fn small_reads_behind_a_backlog_are_batched_and_nothing_is_held_back() {
        use std::os::fd::AsRawFd;
        let (client, mut server) = super::super::read_batching::tcp_pair().await;
        let fd = client.as_raw_fd();
        let mut conn = ReplicationConnection {
            socket: Box::new(client),
            read: BytesMut::new(),
            write: BytesMut::new(),
            server_major: 0,
            batching: ReadBatching::new(Some(fd)),
        };
        conn.batching().on_begin(2 * ENTER_LAG);
        // One message per read: each is written only once the one before was read.
        for _ in 0..SAMPLE_READS {
            server.write_all(&copy_data(100)).await.unwrap();
            let m = conn.next_message().await.unwrap();
            assert!(matches!(m, Message::CopyData(_)));
        }
        assert!(conn.batching().waits(), "{:?}", conn.read_counts());
        assert_eq!(
            super::super::read_batching::receive_low_water(fd),
            BATCH_BYTES
        );

        server.write_all(&copy_data(100)).await.unwrap();
        let began = Instant::now();
        conn.next_message().await.unwrap();
        let took = began.elapsed();
        assert!(took < Duration::from_secs(1), "held back {took:?}");
        let counts = conn.read_counts();
        assert_eq!((counts.batched, counts.waits_ran_out), (1, 1), "{counts:?}");
        assert!(conn.batching().waits(), "still behind: still batching");

        server
            .write_all(&copy_data(2 * BATCH_BYTES as usize))
            .await
            .unwrap();
        conn.next_message().await.unwrap();
        let after = conn.read_counts();
        assert!(
            after.batched > counts.batched && after.reads - counts.reads <= 3,
            "{after:?}"
        );

        conn.batching().on_begin(0);
        assert!(!conn.batching().waits(), "caught up");
        assert_eq!(super::super::read_batching::receive_low_water(fd), 1);
    }
}
