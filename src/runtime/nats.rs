//! The NATS JetStream input (`input.nats_jetstream`): one stream, one
//! subject, read in stream order into the same engine as the Kafka inputs,
//! exactly once into the tier topics.
//!
//! Who reads: the group member that owns partition 0 of the lease topic
//! (`<application_id>-jetstream-lease`, one partition, never written;
//! [`crate::config::Topology::lease_topic`]). The group gives it to exactly
//! one stream thread of one instance at a time, and the range assignor puts
//! it beside partition 0 of the inputs: the NATS input's state (versions,
//! its position) lives in partition 0 of the changelog. Every transaction
//! that moved the NATS position also commits an offset of the lease
//! partition, so the group coordinator fences a member that lost it
//! (KIP-447), as it does for the Kafka inputs.
//!
//! Where it resumes: the stream sequence after the last processed message
//! is a resume marker (key: the subject) in partition 0 of the changelog,
//! written in the transaction that carries the message's outputs. When the
//! lease is assigned the durable consumer is created again from there
//! (JetStream's own acknowledgements do not decide it); after an aborted
//! transaction, from where the transaction started. A redelivered or
//! replayed sequence below the position is never processed again.
//!
//! Acknowledgements: the durable consumer acknowledges `all`; the last
//! message of a transaction is acknowledged once it has committed, so
//! JetStream's view trails the changelog's and never leads it. Only streams
//! with retention `limits` are read: the consumer is deleted and made again
//! at every start, which under interest or work-queue retention could let
//! the server drop messages not yet processed.
//!
//! The fetcher runs on the async runtime: it (re)creates the consumer,
//! pulls, checks that the consumer's delivery sequence has no hole (a
//! message lost in transit, e.g. across a server restart, makes it read
//! again from its position), and hands messages to the stream thread
//! through a bounded channel. NATS being away makes it retry with back-off;
//! nothing is skipped and nothing is dead-lettered for it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures_util::StreamExt as _;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::config::NatsInputConfig;
use crate::telemetry::{self, Metrics};

/// How the processor reaches NATS: flags with environment fallbacks. Its
/// `Debug` shows which secrets are set, never their values.
#[derive(Clone, Default)]
pub struct NatsConnection {
    /// Server URLs (`nats://host:4222`, `tls://…`).
    pub urls: Vec<String>,
    /// A `.creds` file (JWT and NKey seed).
    pub creds_file: Option<PathBuf>,
    /// User and password.
    pub user: Option<(String, String)>,
    /// A token.
    pub token: Option<String>,
    /// PEM CA certificates for the servers' TLS (TLS is then required).
    pub tls_ca_file: Option<PathBuf>,
}

impl std::fmt::Debug for NatsConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsConnection")
            .field("urls", &self.urls)
            .field("creds_file", &self.creds_file)
            .field("user", &self.user.as_ref().map(|(u, _)| u))
            .field("password", &self.user.as_ref().map(|_| "<set>"))
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("tls_ca_file", &self.tls_ca_file)
            .finish()
    }
}

/// Messages the fetcher may hold for the stream thread.
const CHANNEL: usize = 4096;
/// Unacknowledged messages JetStream may deliver before it waits: far more
/// than a commit interval's worth.
const MAX_ACK_PENDING: i64 = 65_536;
/// How long JetStream waits for an acknowledgement before it delivers a
/// message again (a redelivery below the position is dropped anyway).
const ACK_WAIT: Duration = Duration::from_secs(60);
const MIN_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// A message from the stream, as the stream thread processes it.
pub(super) struct Delivered {
    /// Which start of the fetcher it belongs to.
    epoch: u64,
    /// Its stream sequence.
    pub(super) seq: i64,
    /// When the server stored it, in milliseconds since the epoch.
    pub(super) timestamp: i64,
    /// Messages still pending after this one.
    pub(super) pending: u64,
    /// Its headers, every value of each.
    pub(super) headers: Vec<(String, Vec<u8>)>,
    /// The message (payload; acknowledged through it).
    pub(super) message: jetstream::Message,
}

impl std::fmt::Debug for Delivered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivered")
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

enum Command {
    /// Read from stream sequence `from` (≥ 1), tagging messages `epoch`.
    Start { from: u64, epoch: u64 },
    /// Stop reading (the lease was revoked).
    Stop,
}

/// The stream thread's side of the NATS input.
pub(super) struct NatsInput {
    /// The subject: the input's name (positions, resume marker, adapters).
    pub(super) subject: Arc<str>,
    /// The lease topic.
    pub(super) lease: Arc<str>,
    /// This thread holds the lease and reads.
    active: bool,
    /// Messages of older epochs are stale (an abort or a revoke since).
    epoch: u64,
    commands: mpsc::UnboundedSender<Command>,
    delivered: mpsc::Receiver<Delivered>,
    /// A message to process again first (after a registry wait).
    put_back: Option<Delivered>,
    /// The last message processed in the open transaction: acknowledged
    /// (with every one before it) once the transaction commits.
    to_ack: Option<jetstream::Message>,
    rt: tokio::runtime::Handle,
}

impl std::fmt::Debug for NatsInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsInput")
            .field("subject", &self.subject)
            .field("active", &self.active)
            .finish_non_exhaustive()
    }
}

impl NatsInput {
    /// Starts the fetcher (idle until [`NatsInput::activate`]); it connects
    /// when first started.
    pub(super) fn new(
        rt: &tokio::runtime::Handle,
        conn: &NatsConnection,
        input: &NatsInputConfig,
        application_id: &str,
        lease: &str,
        metrics: &Metrics,
    ) -> Self {
        let (commands, rx) = mpsc::unbounded_channel();
        let (tx, delivered) = mpsc::channel(CHANNEL);
        let fetcher = Fetcher {
            conn: conn.clone(),
            stream: input.stream.clone(),
            subject: input.subject.clone(),
            durable: input.consumer_name(application_id),
            commands: rx,
            out: tx,
            js: None,
            metrics: metrics.clone(),
        };
        rt.spawn(fetcher.run());
        NatsInput {
            subject: Arc::from(input.subject.as_str()),
            lease: Arc::from(lease),
            active: false,
            epoch: 0,
            commands,
            delivered,
            put_back: None,
            to_ack: None,
            rt: rt.clone(),
        }
    }

    /// Whether this thread reads the stream.
    pub(super) fn active(&self) -> bool {
        self.active
    }

    /// Reads from stream sequence `from` on (the lease was assigned, or the
    /// open transaction was aborted back to `from`).
    pub(super) fn activate(&mut self, from: i64) {
        self.epoch += 1;
        self.active = true;
        self.put_back = None;
        self.to_ack = None;
        let from = u64::try_from(from.max(1)).unwrap_or(1);
        info!(subject = %self.subject, from, "Reading NATS JetStream.");
        let _ = self.commands.send(Command::Start {
            from,
            epoch: self.epoch,
        });
    }

    /// Stops reading (the lease was revoked; the open transaction has
    /// ended).
    pub(super) fn deactivate(&mut self) {
        if !self.active {
            return;
        }
        self.epoch += 1;
        self.active = false;
        self.put_back = None;
        self.to_ack = None;
        info!(subject = %self.subject, "Stopped reading NATS JetStream: the lease moved.");
        let _ = self.commands.send(Command::Stop);
    }

    /// The next message to process, if one is there.
    pub(super) fn next(&mut self) -> Option<Delivered> {
        if !self.active {
            return None;
        }
        if let Some(d) = self.put_back.take() {
            return Some(d);
        }
        loop {
            match self.delivered.try_recv() {
                Ok(d) if d.epoch == self.epoch => return Some(d),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }

    /// `d` is processed again first (the registry was away); not if the
    /// input has started again since (an abort while committing).
    pub(super) fn put_back(&mut self, d: Delivered) {
        if d.epoch == self.epoch {
            self.put_back = Some(d);
        }
    }

    /// `d` was processed in the open transaction (unless an abort since
    /// started the input again: it is then read, and acknowledged, anew).
    pub(super) fn processed(&mut self, d: Delivered) {
        if d.epoch == self.epoch {
            self.to_ack = Some(d.message);
        }
    }

    /// The open transaction committed: its messages are acknowledged.
    pub(super) fn committed(&mut self) {
        if let Some(m) = self.to_ack.take() {
            self.rt.spawn(async move {
                if let Err(e) = m.ack().await {
                    // JetStream redelivers; the position drops it.
                    debug!(error = %e, "Acknowledging to JetStream failed.");
                }
            });
        }
    }
}

/// What ended a pull.
enum Next {
    /// Start again from the given sequence and epoch.
    Start(u64, u64),
    /// Wait for the next start.
    Stop,
    /// Read again from where it is, after a back-off.
    Retry(String),
    /// The stream thread is gone.
    Closed,
}

struct Fetcher {
    conn: NatsConnection,
    stream: String,
    subject: String,
    durable: String,
    commands: mpsc::UnboundedReceiver<Command>,
    out: mpsc::Sender<Delivered>,
    js: Option<jetstream::Context>,
    metrics: Metrics,
}

impl Fetcher {
    async fn run(mut self) {
        let mut current: Option<(u64, u64)> = None;
        let mut backoff = MIN_BACKOFF;
        loop {
            let (mut from, epoch) = match current.take() {
                Some(c) => c,
                None => match self.commands.recv().await {
                    Some(Command::Start { from, epoch }) => (from, epoch),
                    Some(Command::Stop) => continue,
                    None => return,
                },
            };
            let next = match self.connect().await {
                Ok(js) => self.pull(&js, &mut from, epoch).await,
                Err(why) => Next::Retry(why),
            };
            match next {
                Next::Start(f, e) => {
                    backoff = MIN_BACKOFF;
                    current = Some((f, e));
                }
                Next::Stop => backoff = MIN_BACKOFF,
                Next::Closed => return,
                Next::Retry(why) => {
                    warn!(
                        stream = %self.stream,
                        error = %why,
                        retry_in_ms = backoff.as_millis() as u64,
                        "NATS JetStream unavailable; waiting, skipping nothing."
                    );
                    current = Some((from, epoch));
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        c = self.commands.recv() => match c {
                            Some(Command::Start { from, epoch }) => current = Some((from, epoch)),
                            Some(Command::Stop) => current = None,
                            None => return,
                        },
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// The JetStream context, connecting the first time (the client then
    /// reconnects on its own).
    async fn connect(&mut self) -> Result<jetstream::Context, String> {
        if let Some(js) = &self.js {
            return Ok(js.clone());
        }
        let c = &self.conn;
        let (metrics, stream) = (self.metrics.clone(), self.stream.clone());
        telemetry::nats_connected(&metrics, &stream, false);
        let mut options = async_nats::ConnectOptions::new()
            .name("privacy-router")
            .event_callback(move |event| {
                let (metrics, stream) = (metrics.clone(), stream.clone());
                async move {
                    match event {
                        async_nats::Event::Disconnected => {
                            telemetry::nats_connected(&metrics, &stream, false);
                            warn!("NATS connection lost; reconnecting, skipping nothing.");
                        }
                        async_nats::Event::Connected => {
                            telemetry::nats_connected(&metrics, &stream, true);
                            info!("Connected to NATS.");
                        }
                        async_nats::Event::LameDuckMode => {
                            info!("The NATS server is shutting down (lame duck mode).");
                        }
                        other => debug!(event = %other, "NATS client event."),
                    }
                }
            })
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(5));
        if let Some(path) = &c.creds_file {
            options = options
                .credentials_file(path)
                .await
                .map_err(|e| format!("reading the NATS credentials {}: {e}", path.display()))?;
        }
        if let Some((user, password)) = &c.user {
            options = options.user_and_password(user.clone(), password.clone());
        }
        if let Some(token) = &c.token {
            options = options.token(token.clone());
        }
        if let Some(ca) = &c.tls_ca_file {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        let urls: Vec<async_nats::ServerAddr> = c
            .urls
            .iter()
            .map(|u| u.parse().map_err(|e| format!("the NATS URL {u}: {e}")))
            .collect::<Result<_, _>>()?;
        let client = options
            .connect(urls)
            .await
            .map_err(|e| format!("connecting to NATS: {e}"))?;
        let js = jetstream::new(client);
        self.js = Some(js.clone());
        Ok(js)
    }

    /// Creates the durable consumer from `from` and hands its messages on
    /// until a command, an error or a hole in the delivery sequence.
    async fn pull(&mut self, js: &jetstream::Context, from: &mut u64, epoch: u64) -> Next {
        let stream = match js.get_stream(&self.stream).await {
            Ok(s) => s,
            Err(e) => return Next::Retry(format!("reading the stream {}: {e}", self.stream)),
        };
        if stream.cached_info().config.retention != jetstream::stream::RetentionPolicy::Limits {
            // Its consumer is made again at every takeover and abort: under
            // interest or work-queue retention deleting it would let the
            // server drop messages not yet processed.
            return Next::Retry(format!(
                "the stream {} keeps messages by interest or as a work queue, not by limits: \
                 privacy-router reads only streams with retention limits, so that nothing it has not \
                 committed can be removed",
                self.stream
            ));
        }
        // A durable consumer's start cannot change: it is made again.
        if let Err(e) = stream.delete_consumer(&self.durable).await {
            debug!(error = %e, "No durable consumer to delete.");
        }
        let config = consumer::pull::Config {
            durable_name: Some(self.durable.clone()),
            description: Some(
                "privacy-router: read in order, acknowledged after each Kafka commit".to_owned(),
            ),
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: *from,
            },
            ack_policy: consumer::AckPolicy::All,
            ack_wait: ACK_WAIT,
            max_ack_pending: MAX_ACK_PENDING,
            filter_subject: self.subject.clone(),
            ..Default::default()
        };
        let consumer = match stream.create_consumer(config).await {
            Ok(c) => c,
            Err(e) => return Next::Retry(format!("creating the consumer {}: {e}", self.durable)),
        };
        let mut messages = match consumer.messages().await {
            Ok(m) => m,
            Err(e) => return Next::Retry(format!("pulling from {}: {e}", self.durable)),
        };
        let first = stream.cached_info().state.first_sequence;
        if first > *from {
            // The stream's limits removed them before they were read: there
            // is nothing left to read, and nobody else would say so.
            warn!(
                stream = %self.stream,
                from = *from,
                first,
                missing = first - *from,
                "The stream no longer holds its messages from the stored position up to its first sequence: its limits removed them, and those of this subject were never read."
            );
        }
        debug!(stream = %self.stream, from = *from, "JetStream consumer created.");
        let mut last_delivery: Option<u64> = None;
        loop {
            let m = tokio::select! {
                c = self.commands.recv() => return command(c),
                m = messages.next() => m,
            };
            let m = match m {
                Some(Ok(m)) => m,
                Some(Err(e)) => return Next::Retry(format!("pulling from {}: {e}", self.durable)),
                None => return Next::Retry("the pull ended".to_owned()),
            };
            let Ok(info) = m.info() else {
                return Next::Retry("a message without JetStream metadata".to_owned());
            };
            let (seq, delivery) = (info.stream_sequence, info.consumer_sequence);
            if last_delivery.is_some_and(|l| delivery != l + 1) {
                // A delivery the client never got (lost in transit): read
                // again from the position rather than go past it.
                warn!(
                    stream = %self.stream,
                    from = *from,
                    "JetStream skipped a delivery; reading again from the position."
                );
                return Next::Start(*from, epoch);
            }
            last_delivery = Some(delivery);
            if seq < *from {
                // Delivered again after its acknowledgement was late.
                continue;
            }
            let timestamp = (info.published.unix_timestamp_nanos() / 1_000_000) as i64;
            let pending = info.pending;
            let headers = m
                .message
                .headers
                .as_ref()
                .map(|hs| {
                    hs.iter()
                        .flat_map(|(k, vs)| {
                            vs.iter()
                                .map(move |v| (k.to_string(), AsRef::<[u8]>::as_ref(v).to_vec()))
                        })
                        .collect()
                })
                .unwrap_or_default();
            let d = Delivered {
                epoch,
                seq: seq as i64,
                timestamp,
                pending,
                headers,
                message: m,
            };
            tokio::select! {
                c = self.commands.recv() => return command(c),
                sent = self.out.send(d) => if sent.is_err() { return Next::Closed },
            }
            *from = seq + 1;
        }
    }
}

fn command(c: Option<Command>) -> Next {
    match c {
        Some(Command::Start { from, epoch }) => Next::Start(from, epoch),
        Some(Command::Stop) => Next::Stop,
        None => Next::Closed,
    }
}

#[cfg(test)]
mod tests {
    use super::NatsConnection;

    #[test]
    fn the_connection_settings_never_show_a_secret() {
        let c = NatsConnection {
            urls: vec!["nats://n:4222".to_owned()],
            user: Some(("router".to_owned(), "s3cret-password".to_owned())),
            token: Some("t0ken-value".to_owned()),
            ..NatsConnection::default()
        };
        let shown = format!("{c:?}");
        assert!(
            shown.contains("router") && shown.contains("nats://n:4222"),
            "{shown}"
        );
        assert!(
            !shown.contains("s3cret") && !shown.contains("t0ken"),
            "{shown}"
        );
    }
}
