//! The pure side of the cluster's lifecycle fan-out: which members a call
//! goes to, which member sessions to keep, and how the members' answers
//! merge into the one answer a custom router gets. No I/O.

use std::collections::BTreeMap;

use kvtier_cluster::{Member, Membership};
use kvtier_proto::v1::{EndAgentResponse, HintResponse, RegisterAgentResponse};
use tonic::{Code, Status};

/// One member as a lifecycle session knows it: a session is kept per
/// (id, epoch, address), so a member that registered again (restart, lost
/// lease) or moved gets a fresh session, which registers its agents again.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct MemberKey {
    /// Node id.
    pub id: String,
    /// Registration epoch.
    pub epoch: u64,
    /// gRPC `HOST:PORT`.
    pub grpc: String,
}

impl MemberKey {
    /// The key of `member`.
    pub fn of(member: &Member) -> Self {
        Self {
            id: member.id.clone(),
            epoch: member.epoch,
            grpc: member.grpc.clone(),
        }
    }
}

/// Every member a lifecycle call goes to: active and draining alike (a
/// draining member still serves reads of its blocks, so its eviction
/// still needs the hints), by node id.
pub fn targets(membership: &Membership) -> Vec<MemberKey> {
    membership.members.values().map(MemberKey::of).collect()
}

/// The order in which members are asked for the namespace's hashing seed:
/// active ones first, then draining ones, each by node id.
pub fn handshake_order(membership: &Membership) -> Vec<MemberKey> {
    let mut order: Vec<MemberKey> = membership.active().map(MemberKey::of).collect();
    order.extend(
        membership
            .members
            .values()
            .filter(|m| !m.is_active())
            .map(MemberKey::of),
    );
    order
}

/// The sessions kept, one per member, by node id.
#[derive(Debug)]
pub struct Sessions<S> {
    by_id: BTreeMap<String, (MemberKey, S)>,
}

impl<S> Default for Sessions<S> {
    fn default() -> Self {
        Self {
            by_id: BTreeMap::new(),
        }
    }
}

impl<S: Clone> Sessions<S> {
    /// Brings the sessions in line with `targets`: a member seen before
    /// under the same key keeps its session, a new member (or one with a
    /// new epoch or address) gets one from `make` (skipped when `make`
    /// fails), and a member no longer in `targets` loses its own. Returns
    /// the sessions of `targets`, in their order.
    pub fn sync<E>(
        &mut self,
        targets: &[MemberKey],
        mut make: impl FnMut(&MemberKey) -> Result<S, E>,
        mut failed: impl FnMut(&MemberKey, E),
    ) -> Vec<(MemberKey, S)> {
        self.by_id
            .retain(|id, (key, _)| targets.iter().any(|t| &t.id == id && t == key));
        let mut out = Vec::with_capacity(targets.len());
        for target in targets {
            if let Some((_, session)) = self.by_id.get(&target.id) {
                out.push((target.clone(), session.clone()));
                continue;
            }
            match make(target) {
                Ok(session) => {
                    self.by_id
                        .insert(target.id.clone(), (target.clone(), session.clone()));
                    out.push((target.clone(), session));
                }
                Err(e) => failed(target, e),
            }
        }
        out
    }

    /// How many sessions are kept.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

/// Codes that say the member could not be asked (rather than that it
/// answered no): a refusal is preferred over these when every member failed.
pub(crate) fn is_transport(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown
    )
}

/// Merges the members' answers to one call (`answers` in node-id order):
/// when at least one member succeeded, `combine` of their answers (a
/// failing member costs only its own copy of the call); when every member
/// failed, the first refusal (e.g. `NOT_FOUND`, `INVALID_ARGUMENT`), else
/// the first transport error, its message naming the member; with no
/// member at all, `UNAVAILABLE`.
pub fn merge<T>(
    answers: Vec<(String, Result<T, Status>)>,
    combine: impl FnOnce(Vec<T>) -> T,
) -> Result<T, Status> {
    if answers.is_empty() {
        return Err(Status::unavailable(
            "no cache server in the cluster's membership",
        ));
    }
    let mut oks = Vec::new();
    let mut errors = Vec::new();
    for (id, answer) in answers {
        match answer {
            Ok(t) => oks.push(t),
            Err(status) => errors.push((id, status)),
        }
    }
    if !oks.is_empty() {
        return Ok(combine(oks));
    }
    let pick = errors
        .iter()
        .position(|(_, s)| !is_transport(s.code()))
        .unwrap_or(0);
    let (id, status) = errors.swap_remove(pick);
    let n = errors.len() + 1;
    Err(Status::new(
        status.code(),
        format!(
            "every cache server of the cluster failed ({n}); {id}: {}",
            status.message()
        ),
    ))
}

/// RegisterAgent: `created` when the agent was new on every member that
/// answered (live on any one, it was not new to the cluster); the shortest
/// lease in force (the one to renew within).
pub fn combine_register(answers: Vec<RegisterAgentResponse>) -> RegisterAgentResponse {
    RegisterAgentResponse {
        created: answers.iter().all(|a| a.created),
        lease_ms: answers.iter().map(|a| a.lease_ms).min().unwrap_or(0),
    }
}

/// Hint: each member counts the hinted blocks it holds (a block lives on
/// its owner), so the sum, at most the number of blocks hinted (a block
/// held twice, by its old and new owner, would count twice).
pub fn combine_hint(answers: Vec<HintResponse>, hinted: usize) -> HintResponse {
    let sum: u64 = answers.iter().map(|a| u64::from(a.resident_blocks)).sum();
    let cap = u64::try_from(hinted).unwrap_or(u64::MAX);
    HintResponse {
        resident_blocks: u32::try_from(sum.min(cap)).unwrap_or(u32::MAX),
    }
}

/// EndAgent: every member ends the same agent and sub-agents, so the
/// largest count (a member that did not know some sub-agent counts fewer).
pub fn combine_end(answers: Vec<EndAgentResponse>) -> EndAgentResponse {
    EndAgentResponse {
        ended: answers.iter().map(|a| a.ended).max().unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvtier_cluster::MemberState;

    fn member(id: &str, epoch: u64, state: MemberState) -> Member {
        Member {
            id: id.into(),
            grpc: format!("127.0.0.1:{}", 5000 + epoch),
            data: None,
            weight: 1.0,
            epoch,
            state,
        }
    }

    fn membership(members: &[Member]) -> Membership {
        Membership {
            members: members.iter().map(|m| (m.id.clone(), m.clone())).collect(),
            revision: 1,
            synced: true,
        }
    }

    #[test]
    fn calls_go_to_every_member_and_handshakes_to_active_ones_first() {
        let m = membership(&[
            member("a", 1, MemberState::Draining),
            member("b", 2, MemberState::Active),
            member("c", 3, MemberState::Active),
        ]);
        let ids = |keys: Vec<MemberKey>| keys.into_iter().map(|k| k.id).collect::<Vec<_>>();
        assert_eq!(ids(targets(&m)), ["a", "b", "c"]);
        assert_eq!(ids(handshake_order(&m)), ["b", "c", "a"]);
        assert!(targets(&Membership::default()).is_empty());
    }

    #[test]
    fn a_session_lives_as_long_as_its_member_and_epoch() {
        let mut sessions: Sessions<u32> = Sessions::default();
        let mut made = 0;
        let mut sync = |sessions: &mut Sessions<u32>, members: &[Member]| {
            let keys = targets(&membership(members));
            sessions
                .sync(
                    &keys,
                    |_| -> Result<u32, ()> {
                        made += 1;
                        Ok(made)
                    },
                    |_, _| {},
                )
                .into_iter()
                .map(|(k, s)| (k.id, s))
                .collect::<Vec<_>>()
        };
        let a = member("a", 1, MemberState::Active);
        let b = member("b", 1, MemberState::Active);
        assert_eq!(
            sync(&mut sessions, &[a.clone(), b.clone()]),
            [("a".into(), 1), ("b".into(), 2)]
        );
        // Same members: same sessions. b draining: still called, same session.
        let b_draining = Member {
            state: MemberState::Draining,
            ..b.clone()
        };
        assert_eq!(
            sync(&mut sessions, &[a.clone(), b_draining]),
            [("a".into(), 1), ("b".into(), 2)]
        );
        // b left; a came back with a new epoch; c joined.
        let a2 = member("a", 7, MemberState::Active);
        let c = member("c", 1, MemberState::Active);
        assert_eq!(
            sync(&mut sessions, &[a2, c]),
            [("a".into(), 3), ("c".into(), 4)]
        );
        assert_eq!(sessions.len(), 2);
        assert!(sync(&mut sessions, &[]).is_empty());
        assert!(sessions.is_empty());
    }

    #[test]
    fn a_member_whose_session_cannot_be_made_is_skipped() {
        let mut sessions: Sessions<u32> = Sessions::default();
        let keys = targets(&membership(&[
            member("a", 1, MemberState::Active),
            member("b", 1, MemberState::Active),
        ]));
        let mut failed = Vec::new();
        let got = sessions.sync(
            &keys,
            |k| {
                if k.id == "a" {
                    Err("bad address")
                } else {
                    Ok(9)
                }
            },
            |k, e| failed.push((k.id.clone(), e)),
        );
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0.id, "b");
        assert_eq!(failed, [("a".to_string(), "bad address")]);
    }

    fn ok<T>(id: &str, t: T) -> (String, Result<T, Status>) {
        (id.into(), Ok(t))
    }

    fn err<T>(id: &str, status: Status) -> (String, Result<T, Status>) {
        (id.into(), Err(status))
    }

    #[test]
    fn one_failing_member_costs_only_its_copy() {
        let merged = merge(
            vec![
                ok("a", HintResponse { resident_blocks: 3 }),
                err("b", Status::unavailable("connection refused")),
                ok("c", HintResponse { resident_blocks: 4 }),
            ],
            |a| combine_hint(a, 10),
        )
        .expect("two members answered");
        assert_eq!(merged.resident_blocks, 7);
    }

    #[test]
    fn when_every_member_fails_a_refusal_wins_over_a_transport_error() {
        let status = merge::<EndAgentResponse>(
            vec![
                err("a", Status::unavailable("connection refused")),
                err("b", Status::not_found("unknown agent x")),
                err("c", Status::deadline_exceeded("timed out")),
            ],
            combine_end,
        )
        .expect_err("nobody answered");
        assert_eq!(status.code(), Code::NotFound);
        assert!(
            status.message().contains("b: unknown agent x"),
            "{status:?}"
        );
        assert!(status.message().contains("(3)"), "{status:?}");

        let status = merge::<EndAgentResponse>(
            vec![
                err("a", Status::unavailable("refused")),
                err("b", Status::deadline_exceeded("timed out")),
            ],
            combine_end,
        )
        .expect_err("nobody answered");
        assert_eq!(status.code(), Code::Unavailable);
        assert!(status.message().contains("a: refused"), "{status:?}");

        let status = merge::<EndAgentResponse>(vec![], combine_end).expect_err("no member");
        assert_eq!(status.code(), Code::Unavailable);
    }

    #[test]
    fn answers_merge_into_what_the_cluster_as_a_whole_did() {
        let r = |created, lease_ms| RegisterAgentResponse { created, lease_ms };
        assert_eq!(
            combine_register(vec![r(true, 30_000), r(true, 20_000)]),
            r(true, 20_000)
        );
        // Live on one member (a member that joined later creates it): not new.
        assert_eq!(
            combine_register(vec![r(false, 30_000), r(true, 30_000)]),
            r(false, 30_000)
        );
        // A hint's resident blocks add up over the owners, capped at the hint.
        let h = |n| HintResponse { resident_blocks: n };
        assert_eq!(combine_hint(vec![h(2), h(3), h(0)], 8), h(5));
        assert_eq!(combine_hint(vec![h(6), h(5)], 8), h(8));
        assert_eq!(
            combine_hint(vec![h(u32::MAX), h(u32::MAX)], usize::MAX),
            h(u32::MAX)
        );
        // Every member ends the same agents: the largest count, not the sum.
        let e = |n| EndAgentResponse { ended: n };
        assert_eq!(combine_end(vec![e(2), e(2), e(1)]), e(2));
    }
}
