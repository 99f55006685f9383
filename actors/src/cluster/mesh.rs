//! The mesh and routing (docs/operations.md, docs/architecture.md). Any node accepts any call; a command about a
//! request is carried out by the owner of the request's shard. A node that does not hold
//! the shard resolves the owner from the database, sends the command to the owner's
//! `Router` (a local call, or a remote one over ractor_cluster) with the epoch it resolved
//! and a deadline, and re-resolves when the answer is `not_owner`. While the shard has no
//! owner (a takeover under way) the call waits a bounded time, then answers UNAVAILABLE.
//!
//! The nodes are connected by ractor_cluster over mutual TLS plus its cookie: each node
//! runs a `NodeServer` on its cluster port, and a `Dialer` connects to every live member
//! of the `nodes` table (and again after a disconnect). The mesh carries routing only;
//! membership and ownership come from the database. Remote payloads are versioned prost
//! bytes decoded fallibly: a malformed or unknown call is answered with an error and
//! logged, never a panic.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use prost::Message as _;
use ractor::message::{BoxedDowncastErr, SerializedMessage};
use ractor::rpc::CallResult;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::{NodeServer, NodeServerMessage, RactorMessage};
use tokio::time::Instant;

use crate::config::MeshConfig;
use crate::context::NodeContext;
use crate::domain::{Request, RequestId};
use crate::error::{EngineError, ErrorKind};
use crate::request::{Command, ShardHandle};
use crate::stats::ActorStats;

/// This node's ShardActors, by shard.
pub type Shards = Arc<RwLock<Vec<Option<ShardHandle>>>>;

/// The version of [`RoutedCall`] and [`RoutedReply`] this build speaks.
pub const ROUTE_VERSION: u32 = 1;
const ROUTE_VARIANT: &str = "jitsudo.route";
const NOT_OWNER: &str = "not_owner";

/// The process group of a node's router: by name and incarnation, so that a call never
/// reaches a previous life of the owner (or another cluster's node of the same name).
pub fn router_group(node: &str, incarnation: uuid::Uuid) -> String {
    format!("jitsudo.router.{node}.{incarnation}")
}

/// A command routed to the owner of its request's shard.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RoutedCall {
    #[prost(uint32, tag = "1")]
    pub version: u32,
    #[prost(string, tag = "2")]
    pub request_id: String,
    #[prost(uint32, tag = "3")]
    pub shard: u32,
    /// The epoch the caller resolved the owner at; 0 = whichever the owner holds.
    #[prost(int64, tag = "4")]
    pub epoch: i64,
    /// The command as JSON (`request::Command`).
    #[prost(string, tag = "5")]
    pub command_json: String,
    #[prost(uint64, tag = "6")]
    pub timeout_ms: u64,
    #[prost(string, tag = "7")]
    pub from_node: String,
}

/// The owner's answer.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RoutedReply {
    #[prost(uint32, tag = "1")]
    pub version: u32,
    /// The request after the command (JSON), when it succeeded.
    #[prost(string, tag = "2")]
    pub request_json: String,
    /// Empty on success; `not_owner`, or an [`ErrorKind`] name.
    #[prost(string, tag = "3")]
    pub error: String,
    #[prost(string, tag = "4")]
    pub message: String,
}

impl RoutedReply {
    fn failed(kind: &str, message: impl Into<String>) -> Self {
        RoutedReply {
            version: ROUTE_VERSION,
            error: kind.to_owned(),
            message: message.into(),
            ..Default::default()
        }
    }
}

/// The message a Router receives: prost bytes in, prost bytes out. Its wire form is a
/// ractor_cluster call carrying the bytes unchanged.
pub struct RouteCall {
    pub payload: Vec<u8>,
    pub reply: RpcReplyPort<Vec<u8>>,
}

impl ractor::Message for RouteCall {
    fn serializable() -> bool {
        true
    }

    fn serialize(self) -> Result<SerializedMessage, BoxedDowncastErr> {
        Ok(SerializedMessage::Call {
            variant: ROUTE_VARIANT.into(),
            args: self.payload,
            reply: self.reply,
            metadata: None,
        })
    }

    fn deserialize(m: SerializedMessage) -> Result<Self, BoxedDowncastErr> {
        match m {
            SerializedMessage::Call {
                variant,
                args,
                reply,
                ..
            } if variant == ROUTE_VARIANT => Ok(RouteCall {
                payload: args,
                reply,
            }),
            _ => Err(BoxedDowncastErr),
        }
    }
}

/// Serves routed commands for the shards this node holds.
pub struct Router;

pub struct RouterArgs {
    pub ctx: Arc<NodeContext>,
    pub shards: Shards,
}

impl Actor for Router {
    type Msg = RouteCall;
    type State = RouterArgs;
    type Arguments = RouterArgs;

    async fn pre_start(
        &self,
        me: ActorRef<RouteCall>,
        args: RouterArgs,
    ) -> Result<RouterArgs, ActorProcessingErr> {
        ractor::pg::join(
            router_group(args.ctx.node(), args.ctx.incarnation),
            vec![me.get_cell()],
        );
        Ok(args)
    }

    async fn handle(
        &self,
        _me: ActorRef<RouteCall>,
        msg: RouteCall,
        st: &mut RouterArgs,
    ) -> Result<(), ActorProcessingErr> {
        let (ctx, shards) = (st.ctx.clone(), st.shards.clone());
        // Never wait on a request actor here: the router serves every shard.
        tokio::spawn(async move {
            let reply = serve(&ctx, &shards, &msg.payload).await;
            let _ = msg.reply.send(reply.encode_to_vec());
        });
        Ok(())
    }
}

fn held(shards: &Shards, shard: u32) -> Option<ShardHandle> {
    shards
        .read()
        .ok()
        .and_then(|s| s.get(shard as usize).cloned().flatten())
}

async fn serve(ctx: &NodeContext, shards: &Shards, payload: &[u8]) -> RoutedReply {
    let call = match RoutedCall::decode(payload) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "dropped a malformed routed call");
            return RoutedReply::failed("invalid_argument", "malformed routed call");
        }
    };
    if call.version != ROUTE_VERSION {
        tracing::warn!(from = %call.from_node, version = call.version, "routed call of an unknown version");
        return RoutedReply::failed(
            "unavailable",
            format!(
                "node {} speaks routed-call version {ROUTE_VERSION}, the caller {}: finish the rolling upgrade",
                ctx.node(),
                call.version
            ),
        );
    }
    let parsed = call
        .request_id
        .parse::<uuid::Uuid>()
        .ok()
        .map(RequestId)
        .zip(serde_json::from_str::<Command>(&call.command_json).ok());
    let Some((id, cmd)) = parsed.filter(|(id, _)| id.shard(ctx.config.shards) == call.shard) else {
        tracing::warn!(from = %call.from_node, "dropped a routed call with a bad request id or command");
        return RoutedReply::failed("invalid_argument", "malformed routed call");
    };
    let Some(h) = held(shards, call.shard).filter(|h| call.epoch == 0 || h.epoch == call.epoch)
    else {
        return RoutedReply::failed(
            NOT_OWNER,
            format!("{} does not hold shard {}", ctx.node(), call.shard),
        );
    };
    let timeout = Duration::from_millis(call.timeout_ms.clamp(100, 120_000));
    match h.route(id, cmd, timeout).await {
        Ok(req) => match serde_json::to_string(&req) {
            Ok(json) => RoutedReply {
                version: ROUTE_VERSION,
                request_json: json,
                ..Default::default()
            },
            Err(e) => {
                RoutedReply::failed("unavailable", format!("encoding the answer failed: {e}"))
            }
        },
        Err(e) => RoutedReply::failed(e.kind().as_str(), e.public_message()),
    }
}

/// Carries out `cmd` on the node that holds the request's shard (this one, or another
/// through its router).
pub async fn route(
    ctx: &Arc<NodeContext>,
    shards: &Shards,
    id: RequestId,
    cmd: Command,
) -> Result<Request, EngineError> {
    let shard = id.shard(ctx.config.shards);
    let timeout = ctx.config.call_timeout;
    if let Some(h) = held(shards, shard) {
        return h.route(id, cmd, timeout).await;
    }
    let command_json = serde_json::to_string(&cmd)
        .map_err(|e| EngineError::unavailable(format!("encoding the command failed: {e}")))?;
    let ttl = ctx.config.lease_ttl;
    // Long enough for a takeover: the lease lapses, a round passes, the shard loads.
    let mut deadline = Instant::now() + ttl + ttl / 5 + Duration::from_secs(1);
    let mut last: String;
    let mut fresh = false;
    loop {
        if let Some(h) = held(shards, shard) {
            return h.route(id, cmd, timeout).await;
        }
        // The first try goes by the owner table the node supervisor read at its last
        // round; any retry reads the database again.
        let owner = resolve(ctx, shard, fresh).await?;
        fresh = true;
        match owner {
            Some(r) if r.owner != ctx.node() => {
                match ractor::pg::get_members(&router_group(&r.owner, r.incarnation)).first() {
                    Some(cell) => {
                        let call = RoutedCall {
                            version: ROUTE_VERSION,
                            request_id: id.to_string(),
                            shard,
                            epoch: r.epoch,
                            command_json: command_json.clone(),
                            timeout_ms: timeout.as_millis() as u64,
                            from_node: ctx.node().to_owned(),
                        };
                        let router: ActorRef<RouteCall> = cell.clone().into();
                        // An owner that does not answer within a takeover's time may be
                        // frozen or cut off: look again then (below) rather than wait out
                        // the whole call timeout.
                        let attempt = (ttl + ttl / 5).min(timeout) + Duration::from_secs(1);
                        let answer = router
                            .call(
                                |reply| RouteCall {
                                    payload: call.encode_to_vec(),
                                    reply,
                                },
                                Some(attempt),
                            )
                            .await;
                        match answer {
                            Ok(CallResult::Success(bytes)) => {
                                metrics::counter!(crate::stats::names::ROUTED_CALLS, "outcome" => "answered").increment(1);
                                match answered(&bytes)? {
                                    Some(req) => return Ok(req),
                                    None => last = format!("{} no longer holds it", r.owner),
                                }
                            }
                            Ok(CallResult::Timeout) => {
                                // Sending again is safe only once the silent owner can no
                                // longer commit: its lease lapsed or the shard changed hands
                                // (the fence refuses its write). The new owner gets its own
                                // bounded wait.
                                let now = resolve(ctx, shard, true).await?;
                                if now.as_ref().is_none_or(|n| n.epoch != r.epoch) {
                                    last =
                                        format!("{} stopped answering and lost the shard", r.owner);
                                    deadline =
                                        Instant::now() + ttl + ttl / 5 + Duration::from_secs(1);
                                } else {
                                    metrics::counter!(crate::stats::names::ROUTED_CALLS, "outcome" => "timeout").increment(1);
                                    return Err(EngineError::unavailable(format!(
                                        "node {} (holding the request's shard) did not answer in {} s; the command may or may not have been applied: read the request, then retry",
                                        r.owner,
                                        attempt.as_secs()
                                    )));
                                }
                            }
                            Ok(CallResult::SenderError) | Err(_) => {
                                last = format!("the mesh connection to {} dropped", r.owner)
                            }
                        }
                    }
                    None if ctx.config.mesh.is_none() => {
                        return Err(EngineError::unavailable(format!(
                            "request {id} lives on shard {shard}, held by node {}; this node has no [cluster] mesh configured to route to it: send the call there, or configure the mesh on every node",
                            r.owner
                        )));
                    }
                    None => last = format!("no mesh connection to {} yet", r.owner),
                }
            }
            _ => last = format!("shard {shard} has no owner right now (a takeover is under way)"),
        }
        if Instant::now() >= deadline {
            metrics::counter!(crate::stats::names::ROUTED_CALLS, "outcome" => "unavailable")
                .increment(1);
            return Err(EngineError::unavailable(format!(
                "cannot reach the node holding request {id}: {last}; retry in a few seconds"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The unexpired owner row of `shard`: from the node's owner table, or (`fresh`) from the
/// database, refreshing the table.
async fn resolve(
    ctx: &NodeContext,
    shard: u32,
    fresh: bool,
) -> Result<Option<crate::store::ShardRecord>, EngineError> {
    let now = ctx.now();
    let live = |r: &crate::store::ShardRecord| r.lease_expires_at.is_some_and(|t| t > now);
    if !fresh {
        let cached = ctx
            .owners
            .read()
            .ok()
            .and_then(|t| t.iter().find(|r| r.shard == shard).cloned());
        if let Some(r) = cached.filter(|r| live(r)) {
            return Ok(Some(r));
        }
    }
    let table = ctx.store.shard_table().await?;
    let row = table.iter().find(|r| r.shard == shard && live(r)).cloned();
    ctx.set_owners(table);
    Ok(row)
}

/// `Some(request)` on success, `None` for `not_owner` (resolve again).
fn answered(bytes: &[u8]) -> Result<Option<Request>, EngineError> {
    let reply = RoutedReply::decode(bytes).map_err(|e| {
        EngineError::unavailable(format!("the owner's answer could not be read: {e}"))
    })?;
    match reply.error.as_str() {
        "" => serde_json::from_str(&reply.request_json)
            .map(Some)
            .map_err(|e| {
                EngineError::unavailable(format!("the owner's answer could not be read: {e}"))
            }),
        NOT_OWNER => Ok(None),
        kind => Err(EngineError::Remote {
            kind: ErrorKind::parse(kind).unwrap_or(ErrorKind::Unavailable),
            message: reply.message,
        }),
    }
}

/// Starts this node's NodeServer on the cluster port (mutual TLS and the cookie).
pub async fn start_server(
    ctx: &NodeContext,
    mesh: &MeshConfig,
    supervisor: ractor::ActorCell,
) -> Result<ActorRef<NodeServerMessage>, EngineError> {
    let server = NodeServer::new(
        mesh.listen.port(),
        mesh.cookie.clone(),
        ctx.node().to_owned(),
        mesh.advertise
            .rsplit_once(':')
            .map_or(mesh.advertise.as_str(), |(h, _)| h)
            .to_owned(),
        Some(ractor_cluster::IncomingEncryptionMode::Tls(
            tokio_rustls::TlsAcceptor::from(mesh.server.clone()),
        )),
        Some(ractor_cluster::node::NodeConnectionMode::Transitive),
    )
    .with_listen_addr(mesh.listen.ip());
    let (server, _) = Actor::spawn_linked(None, server, (), supervisor)
        .await
        .map_err(|e| {
            EngineError::unavailable(format!(
                "could not start the cluster listener on {}: {e}",
                mesh.listen
            ))
        })?;
    Ok(server)
}

/// How long one dial (TCP and TLS handshake) may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(2);

/// Connects to every live member that is not connected yet, each second.
pub struct Dialer;

/// The member name in a session's peer name: ractor_cluster names a node
/// `{name}@{hostname}` on the wire, the members table by name alone. Matching the two is
/// what keeps the dialer from dialing a connected peer again every round (each such dial
/// is refused as a duplicate and may drop the session routed calls are using).
fn peer_node(wire_name: &str) -> &str {
    wire_name
        .rsplit_once('@')
        .map_or(wire_name, |(name, _)| name)
}

pub struct DialerArgs {
    pub ctx: Arc<NodeContext>,
    pub server: ActorRef<NodeServerMessage>,
    pub mesh: MeshConfig,
}

pub struct DialerState {
    args: DialerArgs,
    stats: Arc<ActorStats>,
    ticker: Option<tokio::task::JoinHandle<()>>,
}

#[derive(RactorMessage)]
pub enum DialerMsg {
    Dial,
}

impl Actor for Dialer {
    type Msg = DialerMsg;
    type State = DialerState;
    type Arguments = DialerArgs;

    async fn pre_start(
        &self,
        me: ActorRef<DialerMsg>,
        args: DialerArgs,
    ) -> Result<DialerState, ActorProcessingErr> {
        let stats = ActorStats::new("mesh", args.ctx.node().to_owned(), 0);
        args.ctx.registry.register(&stats);
        stats.set_state(format!("listening on {}", args.mesh.listen));
        let _ = stats.cast(&me, DialerMsg::Dial);
        let ticker = stats.tick_every(me, Duration::from_secs(1), || DialerMsg::Dial);
        Ok(DialerState {
            args,
            stats,
            ticker: Some(ticker),
        })
    }

    async fn post_stop(
        &self,
        _me: ActorRef<DialerMsg>,
        st: &mut DialerState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(t) = st.ticker.take() {
            t.abort();
        }
        st.args.ctx.registry.unregister(&st.stats);
        Ok(())
    }

    async fn handle(
        &self,
        _me: ActorRef<DialerMsg>,
        _msg: DialerMsg,
        st: &mut DialerState,
    ) -> Result<(), ActorProcessingErr> {
        st.stats.dequeued();
        let a = &st.args;
        let connected: std::collections::BTreeSet<String> =
            match ractor::call!(a.server, NodeServerMessage::GetSessions) {
                Ok(sessions) => sessions
                    .into_values()
                    .filter_map(|s| s.peer_name.map(|n| peer_node(&n.name).to_owned()))
                    .collect(),
                Err(e) => {
                    tracing::warn!(error = %e, "the cluster listener does not answer");
                    return Ok(());
                }
            };
        metrics::gauge!(crate::stats::names::MESH_PEERS).set(connected.len() as f64);
        let Ok((db_now, members)) = a.ctx.store.members().await else {
            return Ok(());
        };
        let ttl = chrono::Duration::from_std(a.ctx.config.lease_ttl)
            .unwrap_or(chrono::Duration::seconds(5));
        for m in members {
            if m.node == a.ctx.node()
                || m.cluster_addr.is_empty()
                || db_now - m.heartbeat_at >= ttl
                || connected.contains(&m.node)
            {
                continue;
            }
            let host = m
                .cluster_addr
                .rsplit_once(':')
                .map_or(m.cluster_addr.as_str(), |(h, _)| h)
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let Ok(name) = rustls::pki_types::ServerName::try_from(host) else {
                tracing::warn!(peer = %m.node, addr = %m.cluster_addr, "a member advertises an address that is no host name");
                continue;
            };
            let connector = tokio_rustls::TlsConnector::from(a.mesh.client.clone());
            // A frozen peer accepts TCP but never finishes the handshake: bound the wait,
            // so one stuck peer does not keep the others from being dialed.
            let dial = ractor_cluster::client_connect_enc(
                &a.server,
                m.cluster_addr.clone(),
                connector,
                name,
            );
            match tokio::time::timeout(DIAL_TIMEOUT, dial).await {
                Ok(Ok(())) => {
                    metrics::counter!(crate::stats::names::MESH_DIALS).increment(1);
                    tracing::info!(peer = %m.node, addr = %m.cluster_addr, "dialed a cluster peer")
                }
                Ok(Err(e)) => {
                    tracing::warn!(peer = %m.node, addr = %m.cluster_addr, error = %e, "could not reach a cluster peer; retrying")
                }
                Err(_) => {
                    tracing::warn!(peer = %m.node, addr = %m.cluster_addr, "a cluster peer did not finish the handshake in time; retrying")
                }
            }
        }
        st.stats
            .set_state(format!("{} peers connected", connected.len()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::peer_node;

    #[test]
    fn a_session_peer_name_is_matched_to_its_member_without_the_host() {
        assert_eq!(peer_node("node-1@127.0.0.1"), "node-1");
        assert_eq!(peer_node("node-1@jitsudo-1.internal"), "node-1");
        assert_eq!(peer_node("a@b@[::1]"), "a@b");
        assert_eq!(peer_node("node-1"), "node-1");
    }
}
