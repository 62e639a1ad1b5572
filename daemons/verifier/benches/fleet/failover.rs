//! Failover: replica 1 is killed with SIGKILL, and the benchmark times how long the agents it
//! held go unattested. Per agent it takes two moments, in seconds after the kill: the first
//! quote the agent serves to a surviving replica (the simulator counts them), and the first
//! attestation a surviving replica records (the agent's `last_attestation_at`, as ListAgents
//! through a survivor shows it, later than the kill). It also notes when the last lease in
//! replica 1's name changed hands. The documented bound is `agent_lease_seconds`, a sixth of it (the survivors' renewal
//! period) and two quote
//! intervals.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use kl_proto::verifier::v1 as pb;
use kl_proto::verifier::v1::verifier_client::VerifierClient;
use tonic::transport::Channel;

use crate::BoxError;
use crate::agent::SoftAgent;
use crate::database::FleetDatabase;
use crate::verifier::VerifierProcess;

/// How often the simulator's quote counters are read (on a task of their own, so that the
/// slower reads of the survivor and the database do not delay them).
const QUOTE_POLL: Duration = Duration::from_millis(50);
/// How often the survivor's ListAgents and the lease table are read.
const RECORD_POLL: Duration = Duration::from_millis(500);
/// A quote served this soon after the kill may have been asked for by the killed replica.
const IN_FLIGHT: Duration = Duration::from_millis(500);

/// What the failover took, seconds after the kill.
pub struct Failover {
    /// Agents replica 1 held when it was killed.
    pub held: usize,
    /// When the last lease in its name changed hands; `None` if not within the limit.
    pub leases_moved: Option<f64>,
    /// Per agent taken over: its first quote served to a survivor (sorted).
    pub first_quote: Vec<f64>,
    /// Per agent taken over: its first attestation recorded by a survivor (sorted).
    pub recorded: Vec<f64>,
    /// How long the benchmark waited at most.
    pub limit: f64,
}

/// Kills `killed` (holder `id`) and waits until every agent it held has an attestation
/// recorded by another replica, or until `limit`. `survivor` is a client of a surviving replica.
pub async fn measure(
    killed: &mut VerifierProcess,
    id: &str,
    survivors: &mut [VerifierProcess],
    survivor: &mut VerifierClient<Channel>,
    database: &FleetDatabase,
    agents: &Arc<Vec<SoftAgent>>,
    limit: Duration,
) -> Result<Failover, BoxError> {
    let owner = id.to_owned();
    let held = database.blocking(move |db| db.held_by(&owner)).await?;
    let index: HashMap<&str, usize> =
        agents.iter().enumerate().map(|(i, a)| (a.id.as_str(), i)).collect();
    let held: Vec<usize> = held.iter().filter_map(|id| index.get(id.as_str()).copied()).collect();

    killed.kill()?;
    let (killed_at, killed_wall) = (Instant::now(), SystemTime::now());
    eprintln!(
        "{id} killed (SIGKILL) at {:.3} (UNIX time); it held {} agents",
        killed_wall.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs_f64(),
        held.len()
    );
    tokio::time::sleep(IN_FLIGHT).await;
    let first_quote = watch_quotes(agents.clone(), held.clone(), killed_at, limit);

    let mut recorded: HashMap<&str, f64> = HashMap::new();
    let mut leases_moved = None;
    while killed_at.elapsed() < limit {
        let next_poll = Instant::now() + RECORD_POLL;
        for survivor in survivors.iter_mut() {
            survivor.check_running()?;
        }
        if leases_moved.is_none() {
            let owner = id.to_owned();
            if database.blocking(move |db| db.leases_of(&owner)).await? == 0 {
                leases_moved = Some(killed_at.elapsed().as_secs_f64());
            }
        }
        for status in list_agents(survivor).await? {
            let Some(at) = status.last_attestation_at else { continue };
            let at = SystemTime::UNIX_EPOCH
                + Duration::new(at.seconds.max(0) as u64, at.nanos.max(0) as u32);
            let Ok(after) = at.duration_since(killed_wall) else { continue };
            if let Some(&i) = index.get(status.agent_id.as_str()) {
                recorded.entry(agents[i].id.as_str()).or_insert(after.as_secs_f64());
            }
        }
        let done = held.iter().all(|&i| recorded.contains_key(agents[i].id.as_str()));
        let quoted = first_quote.lock().unwrap_or_else(|e| e.into_inner()).len() == held.len();
        if done && quoted && leases_moved.is_some() {
            break;
        }
        tokio::time::sleep_until(next_poll.into()).await;
    }
    let mut first_quote: Vec<f64> =
        first_quote.lock().unwrap_or_else(|e| e.into_inner()).values().copied().collect();
    first_quote.sort_by(f64::total_cmp);
    let mut recorded: Vec<f64> =
        held.iter().filter_map(|&i| recorded.get(agents[i].id.as_str()).copied()).collect();
    recorded.sort_by(f64::total_cmp);
    Ok(Failover {
        held: held.len(),
        leases_moved,
        first_quote,
        recorded,
        limit: limit.as_secs_f64(),
    })
}

/// Per agent of `held` (indexes into `agents`), the seconds from `killed_at` to the first quote
/// it serves from now on, until each has served one or `limit` has passed.
fn watch_quotes(
    agents: Arc<Vec<SoftAgent>>,
    held: Vec<usize>,
    killed_at: Instant,
    limit: Duration,
) -> Arc<Mutex<HashMap<usize, f64>>> {
    let first: Arc<Mutex<HashMap<usize, f64>>> = Arc::default();
    let seen = first.clone();
    let before: Vec<u64> = held.iter().map(|&i| agents[i].with(|m| m.quotes)).collect();
    tokio::spawn(async move {
        while killed_at.elapsed() < limit {
            let now = killed_at.elapsed().as_secs_f64();
            let all = {
                let mut first = seen.lock().unwrap_or_else(|e| e.into_inner());
                for (&i, before) in held.iter().zip(&before) {
                    if !first.contains_key(&i) && agents[i].with(|m| m.quotes) > *before {
                        first.insert(i, now);
                    }
                }
                first.len() == held.len()
            };
            if all {
                return;
            }
            tokio::time::sleep(QUOTE_POLL).await;
        }
    });
    first
}

async fn list_agents(
    admin: &mut VerifierClient<Channel>,
) -> Result<Vec<pb::AgentStatus>, BoxError> {
    let mut out = Vec::new();
    let mut page_token = String::new();
    loop {
        let request = pb::ListAgentsRequest { page_size: 1000, page_token, state: 0 };
        let answer = admin.list_agents(request).await?.into_inner();
        out.extend(answer.agents);
        if answer.next_page_token.is_empty() {
            return Ok(out);
        }
        page_token = answer.next_page_token;
    }
}

fn pick(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Prints the failover table; `lease` and `interval` give the bound.
pub fn print(failover: &Failover, id: &str, lease: f64, interval: f64) {
    let bound = lease * 7.0 / 6.0 + 2.0 * interval;
    println!(
        "Failover: {id} killed with SIGKILL holding {} agents (agent_lease_seconds {lease}, \
         quote_interval {interval} s, bound {bound:.1} s):",
        failover.held
    );
    println!();
    println!("| seconds after the kill | agents | p50 | max |");
    println!("|---|---:|---:|---:|");
    let row = |what: &str, v: &[f64]| {
        println!(
            "| {what} | {} | {:.2} | {:.2} |",
            v.len(),
            pick(v, 50.0),
            v.last().copied().unwrap_or(f64::NAN)
        );
    };
    row("first quote served to a surviving replica", &failover.first_quote);
    row("first attestation recorded by a surviving replica", &failover.recorded);
    match failover.leases_moved {
        Some(at) => println!("| last lease of {id} taken over | | | {at:.2} |"),
        None => {
            println!("| last lease of {id} taken over | | | not within {:.0} s |", failover.limit)
        }
    }
    println!();
    let worst = failover.recorded.last().copied().unwrap_or(f64::INFINITY);
    if failover.recorded.len() < failover.held {
        println!(
            "{} of {} agents had no attestation recorded by a surviving replica within {:.0} s",
            failover.held - failover.recorded.len(),
            failover.held,
            failover.limit
        );
    } else if worst <= bound {
        println!("every agent attested again within the bound ({worst:.2} s <= {bound:.1} s)");
    } else {
        println!("the bound was exceeded: {worst:.2} s > {bound:.1} s");
    }
    println!();
}
