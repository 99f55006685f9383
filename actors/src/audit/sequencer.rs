//! AuditSequencer: the cluster's one chainer. It holds the `audit` lease, picks up committed
//! events in batches, links them (`hash = SHA-256(prev ‖ canonical(event))`) and appends
//! the links with writes fenced by the lease epoch, so two sequencers can never fork the
//! chain. It signs checkpoints every N events or T seconds and enqueues them for the sinks.

use std::sync::Arc;
use std::time::{Duration, Instant};

use jitsudo_proto::audit::{GENESIS, chain_hash, key_id, sign_checkpoint};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use ractor_cluster::RactorMessage;
use serde_json::json;
use uuid::Uuid;

use super::record;
use crate::config::AuditConfig;
use crate::singleton::{Holding, SingletonLease};
use crate::stats::{ActorRegistry, ActorStats, names};
use crate::store::{AUDIT_LEASE, ChainRow, Checkpoint, OutboxRow, SharedStore, Write};

#[derive(RactorMessage)]
pub enum SequencerMsg {
    Tick,
}

pub struct AuditSequencer;

pub struct SequencerArgs {
    pub store: SharedStore,
    pub node: String,
    pub incarnation: Uuid,
    pub lease_ttl: Duration,
    pub config: AuditConfig,
    pub sinks: Vec<String>,
    pub registry: ActorRegistry,
}

pub struct SequencerState {
    args: SequencerArgs,
    stats: Arc<ActorStats>,
    lease: SingletonLease,
    /// (seq, hash) of the chain's last link as this sequencer knows it.
    tip: Option<(i64, [u8; 32], chrono::DateTime<chrono::Utc>)>,
    last_checkpoint: Option<(i64, Instant)>,
    last_sweep: Instant,
    last_window: Instant,
    /// (time, id) of the newest event chained: reading forward starts after it.
    cursor: Option<(chrono::DateTime<chrono::Utc>, Uuid)>,
    /// The last forward read was a full batch: a backlog is being worked off.
    behind: bool,
    last_stats: Instant,
    ticker: Option<tokio::task::JoinHandle<()>>,
}

impl SequencerState {
    /// Takes (or keeps, by renewing) the `audit` lease.
    async fn hold_lease(&mut self) -> Result<bool, crate::store::StoreError> {
        let a = &self.args;
        match self
            .lease
            .hold(&a.store, &a.node, a.incarnation, a.lease_ttl)
            .await?
        {
            Holding::Kept => Ok(true),
            Holding::Taken => {
                self.load_tip().await?;
                Ok(true)
            }
            Holding::Standby => {
                self.stats.set_state("standby (another node sequences)");
                Ok(false)
            }
        }
    }

    async fn load_tip(&mut self) -> Result<(), crate::store::StoreError> {
        let tip = self.args.store.chain_tip().await?;
        self.cursor = tip.as_ref().map(|t| (t.event_at, t.event_id));
        self.tip = tip.map(|t| {
            let mut h = [0u8; 32];
            if t.hash.len() == 32 {
                h.copy_from_slice(&t.hash);
            }
            (t.seq, h, t.event_at)
        });
        let cps = self.args.store.checkpoints().await?;
        self.last_checkpoint = cps.last().map(|c| (c.seq, Instant::now()));
        Ok(())
    }

    /// Chains one batch; returns how many events it linked.
    async fn chain_batch(&mut self) -> Result<usize, crate::store::StoreError> {
        let Some(fence) = self.lease.fence().cloned() else {
            return Ok(0);
        };
        let cfg = &self.args.config;
        // Normally read forward from the newest chained event (nothing already chained is
        // re-read). Once a second, look back over the lookback window for events that
        // committed after later-stamped ones; once per `full_sweep_every`, over everything.
        // While a backlog is being worked off, these scans (each reads the whole window or
        // table) run ten times less often: they find stragglers, which can wait.
        let slower = if self.behind { 10 } else { 1 };
        let full = self.last_sweep.elapsed() >= cfg.full_sweep_every * slower;
        if full {
            self.last_sweep = Instant::now();
        }
        let window = !full && self.last_window.elapsed() >= Duration::from_secs(slower.into());
        if window {
            self.last_window = Instant::now();
        }
        let lookback =
            chrono::Duration::from_std(cfg.lookback).unwrap_or(chrono::Duration::minutes(1));
        let events = match (self.cursor, full, window) {
            (Some(c), false, false) => self.args.store.unchained_after(c, cfg.batch).await?,
            (Some((at, _)), false, true) => {
                self.args
                    .store
                    .unchained_events(Some(at - lookback), cfg.batch)
                    .await?
            }
            _ => self.args.store.unchained_events(None, cfg.batch).await?,
        };
        if !full && !window {
            self.behind = events.len() >= cfg.batch as usize;
        }
        if events.is_empty() {
            return Ok(0);
        }
        let (mut seq, mut prev) = self.tip.map(|(s, h, _)| (s, h)).unwrap_or((0, GENESIS));
        let mut links = Vec::with_capacity(events.len());
        for e in &events {
            let h = chain_hash(&prev, &record(e));
            seq += 1;
            links.push(ChainRow {
                seq,
                event_id: e.id,
                prev_hash: prev.to_vec(),
                hash: h.to_vec(),
            });
            prev = h;
        }
        match self.args.store.append_chain(&fence, &links).await? {
            Write::Updated { .. } => {
                let last_at = events
                    .iter()
                    .map(|e| e.at)
                    .max()
                    .unwrap_or_else(chrono::Utc::now);
                let at = self.tip.map(|(_, _, t)| t.max(last_at)).unwrap_or(last_at);
                self.tip = Some((seq, prev, at));
                let newest = events.iter().map(|e| (e.at, e.id)).max();
                self.cursor = self.cursor.max(newest);
                metrics::gauge!(names::AUDIT_CHAIN_LENGTH).set(seq as f64);
                metrics::counter!(names::AUDIT_CHAINED).increment(links.len() as u64);
                self.stats.set_state(format!("sequencing · chain at {seq}"));
                Ok(links.len())
            }
            _ => {
                // Fenced out or raced: another sequencer holds the lease. Start over.
                tracing::warn!("audit chain append refused; re-reading the lease and the tip");
                self.lease.lost();
                Ok(0)
            }
        }
    }

    async fn checkpoint_if_due(&mut self) -> Result<(), crate::store::StoreError> {
        let (Some(key), Some(fence), Some((seq, hash, _))) = (
            self.args.config.signing_key.clone(),
            self.lease.fence().cloned(),
            self.tip,
        ) else {
            return Ok(());
        };
        let cfg = &self.args.config;
        let due = match self.last_checkpoint {
            None => true,
            Some((cp_seq, at)) => {
                seq > cp_seq
                    && (seq - cp_seq >= cfg.checkpoint_every
                        || at.elapsed() >= cfg.checkpoint_interval)
            }
        };
        if !due {
            return Ok(());
        }
        let at = self.args.store.db_now().await?;
        // Stored times have microsecond precision: sign exactly what is stored.
        let at = chrono::DateTime::from_timestamp_micros(at.timestamp_micros()).unwrap_or(at);
        let signature = sign_checkpoint(&key, seq, &hash, at.timestamp_micros());
        let cp = Checkpoint {
            seq,
            hash: hash.to_vec(),
            at,
            key_id: key_id(&key.verifying_key()),
            signature: signature.to_vec(),
        };
        let payload = json!({
            "seq": seq, "hash": hex::encode(hash), "at": at, "at_micros": at.timestamp_micros(), "key_id": cp.key_id, "signature": hex::encode(signature),
        })
        .to_string();
        let outbox: Vec<OutboxRow> = self
            .args
            .sinks
            .iter()
            .map(|s| OutboxRow {
                sink: s.clone(),
                kind: "audit.checkpoint".into(),
                payload: payload.clone(),
            })
            .collect();
        match self.args.store.add_checkpoint(&fence, &cp, &outbox).await? {
            Write::Updated { .. } => {
                metrics::counter!(names::AUDIT_CHECKPOINTS).increment(1);
                self.last_checkpoint = Some((seq, Instant::now()));
            }
            _ => self.lease.lost(),
        }
        Ok(())
    }

    /// Publishes the backlog on every node, holder or not, whether chaining works or not:
    /// a sequencer that stopped (or keeps failing) shows as a backlog that ages.
    async fn publish_stats(&mut self, holding: bool) -> Result<(), crate::store::StoreError> {
        if self.last_stats.elapsed() < Duration::from_secs(5) {
            return Ok(());
        }
        self.last_stats = Instant::now();
        // Unchained events within the lookback window of the chain's newest event: an exact
        // count over the whole log would read every event every time. A standby (no cursor
        // of its own) looks back ten minutes: enough for the backlog's age to say the
        // sequencer is not running.
        let lookback = chrono::Duration::from_std(self.args.config.lookback)
            .unwrap_or(chrono::Duration::minutes(1));
        let since = match self.cursor {
            Some((at, _)) if holding => Some(at - lookback),
            _ => Some(chrono::Utc::now() - chrono::Duration::minutes(10)),
        };
        let s = self.args.store.audit_stats(since).await?;
        metrics::gauge!(names::AUDIT_CHAIN_LENGTH).set(s.chain_length as f64);
        metrics::gauge!(names::AUDIT_UNCHAINED).set(s.unchained as f64);
        let age = s
            .oldest_unchained_at
            .map(|t| (s.db_now - t).num_milliseconds() as f64 / 1000.0)
            .unwrap_or(0.0);
        metrics::gauge!(names::AUDIT_UNCHAINED_AGE).set(age.max(0.0));
        Ok(())
    }

    async fn tick(&mut self) -> Result<(), crate::store::StoreError> {
        let holding = self.hold_lease().await?;
        let work = if holding {
            self.sequence().await
        } else {
            Ok(())
        };
        let stats = self.publish_stats(holding).await;
        work.and(stats)
    }

    async fn sequence(&mut self) -> Result<(), crate::store::StoreError> {
        // Drain what is there now, a bounded number of batches per tick.
        for _ in 0..50 {
            // A long backlog must not outlast the lease: renew (cheaply) between batches.
            if !self.hold_lease().await?
                || self.chain_batch().await? < self.args.config.batch as usize
            {
                break;
            }
        }
        self.checkpoint_if_due().await
    }
}

impl Actor for AuditSequencer {
    type Msg = SequencerMsg;
    type State = SequencerState;
    type Arguments = SequencerArgs;

    async fn pre_start(
        &self,
        me: ActorRef<SequencerMsg>,
        args: SequencerArgs,
    ) -> Result<SequencerState, ActorProcessingErr> {
        let stats = ActorStats::new("audit_sequencer", args.node.clone(), 0);
        args.registry.register(&stats);
        let ticker = stats.tick_every(me, args.config.poll, || SequencerMsg::Tick);
        Ok(SequencerState {
            args,
            stats,
            lease: SingletonLease::new(AUDIT_LEASE, "audit sequencer"),
            tip: None,
            last_checkpoint: None,
            last_sweep: Instant::now() - Duration::from_secs(3600),
            last_window: Instant::now(),
            cursor: None,
            behind: false,
            last_stats: Instant::now() - Duration::from_secs(3600),
            ticker: Some(ticker),
        })
    }

    async fn post_stop(
        &self,
        _me: ActorRef<SequencerMsg>,
        st: &mut SequencerState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(t) = st.ticker.take() {
            t.abort();
        }
        st.args.registry.unregister(&st.stats);
        Ok(())
    }

    async fn handle(
        &self,
        _me: ActorRef<SequencerMsg>,
        msg: SequencerMsg,
        st: &mut SequencerState,
    ) -> Result<(), ActorProcessingErr> {
        st.stats.dequeued();
        match msg {
            SequencerMsg::Tick => {
                if let Err(e) = st.tick().await {
                    tracing::warn!(error = %e, "audit sequencing failed; retrying");
                    st.stats.set_state(format!("retrying: {e}"));
                }
            }
        }
        Ok(())
    }
}

/// Handle to a running sequencer.
pub struct SequencerHandle {
    pub actor: ActorRef<SequencerMsg>,
}

impl SequencerHandle {
    pub async fn spawn(
        args: SequencerArgs,
        supervisor: Option<ractor::ActorCell>,
    ) -> Result<Self, ractor::SpawnErr> {
        let (actor, _) = match supervisor {
            Some(s) => Actor::spawn_linked(None, AuditSequencer, args, s).await?,
            None => Actor::spawn(None, AuditSequencer, args).await?,
        };
        Ok(SequencerHandle { actor })
    }
}
