use super::*;

#[test]
fn bins_cover_the_range() {
    let e = Edges::default();
    assert_eq!(e.bin(0.0), 0);
    assert_eq!(e.bin(499.0), 0);
    assert_eq!(e.bin(500.0), 1);
    assert_eq!(e.bin(624.0), 1);
    assert_eq!(e.bin(626.0), 2);
    assert_eq!(e.bin(1e12), BINS - 1);
    assert!(e.max_ms() > 86_400_000.0);
}

/// `discounted` against brute-force numeric integration of the same survival.
#[test]
fn discounted_matches_numeric_integration() {
    let e = Edges::default();
    let mut h = GapHistogram::default();
    for (gap, n) in [(300, 2), (2_000, 5), (9_000, 3), (45_000, 1), (400_000, 2)] {
        for _ in 0..n {
            h.record(&e, gap, 1.0);
        }
    }
    assert_eq!(h.survival(&e, 0.0), 13.0);
    assert_eq!(h.survival(&e, 1e12), 0.0);
    for (w, t) in [(0.0, 1_000.0), (1_500.0, 20_000.0), (10_000.0, 300_000.0)] {
        let (hits, occ) = h.discounted(&e, w, &Discount::new(&e, t as u64));
        let (steps, end) = (400_000, w + 30.0 * t);
        let dx = (end - w) / steps as f64;
        let (mut nh, mut no) = (0.0, 0.0);
        for i in 0..steps {
            let x = w + i as f64 * dx;
            let decay = (-(x + 0.5 * dx - w) / t).exp();
            nh += (h.survival(&e, x) - h.survival(&e, x + dx)) * decay;
            no += h.survival(&e, x + 0.5 * dx) * decay * dx;
        }
        assert!((hits - nh).abs() / nh < 1e-3, "hits {hits} vs {nh}");
        assert!((occ - no).abs() / no < 1e-3, "occupancy {occ} vs {no}");
    }
    assert_eq!(
        h.discounted(&e, 1e12, &Discount::new(&e, 1_000)),
        (0.0, 0.0)
    );
}

#[test]
fn tool_calls_outrank_ends_of_turn_and_overdue_agents_fade() {
    let mut f = Forecaster::new(4.0, 1.0);
    let mut a = AgentGaps::default();
    for i in 0..50 {
        f.record(Gap::AfterAnswer(CallEnd::ToolCall), 5_000 + 100 * i, &mut a);
        f.record(
            Gap::AfterAnswer(CallEnd::EndOfTurn),
            200_000 + 10_000 * i,
            &mut a,
        );
    }
    let fresh = AgentGaps::default();
    let h = f.discount(60_000);
    let tool = f.density(Gap::AfterAnswer(CallEnd::ToolCall), 1_000, &h, &fresh);
    let turn = f.density(Gap::AfterAnswer(CallEnd::EndOfTurn), 1_000, &h, &fresh);
    assert!(tool > 10.0 * turn, "{tool} vs {turn}");
    // Long overdue after a tool call: worth less than fresh.
    let late = f.density(Gap::AfterAnswer(CallEnd::ToolCall), 3_600_000, &h, &fresh);
    assert!(late < tool / 10.0);
    // Past every observation: still positive, and smaller the longer it waits.
    let gone = f.density(
        Gap::AfterAnswer(CallEnd::ToolCall),
        10u64.pow(12),
        &h,
        &fresh,
    );
    let gone2 = f.density(
        Gap::AfterAnswer(CallEnd::ToolCall),
        2 * 10u64.pow(12),
        &h,
        &fresh,
    );
    assert!(gone > 0.0 && gone2 < gone);
}

#[test]
fn an_agents_own_history_shifts_its_forecast() {
    let mut f = Forecaster::new(2.0, 1.0);
    let mut slow = AgentGaps::default();
    let mut fast = AgentGaps::default();
    for _ in 0..100 {
        f.record(Gap::AfterAnswer(CallEnd::ToolCall), 3_000, &mut fast);
    }
    for _ in 0..10 {
        f.record(Gap::AfterAnswer(CallEnd::ToolCall), 120_000, &mut slow);
    }
    let g = Gap::AfterAnswer(CallEnd::ToolCall);
    let d = f.discount(30_000);
    assert!(f.density(g, 1_000, &d, &fast) > 5.0 * f.density(g, 1_000, &d, &slow));
}

/// Waits after an end of turn come back in about a minute, after a tool call
/// in about ten; `never` of every 10 end-of-turn waits ended by lease expiry.
fn turn_fast_tool_slow(never: usize) -> Forecaster {
    let mut f = Forecaster::new(2.0, 1.0);
    let mut a = AgentGaps::default();
    for i in 0..100 {
        f.record(
            Gap::AfterAnswer(CallEnd::EndOfTurn),
            55_000 + 100 * i,
            &mut a,
        );
        f.record(
            Gap::AfterAnswer(CallEnd::ToolCall),
            590_000 + 200 * i,
            &mut a,
        );
    }
    for _ in 0..10 * never {
        f.record_never(Gap::AfterAnswer(CallEnd::EndOfTurn), &AgentGaps::default());
    }
    f
}

#[test]
fn waits_that_never_end_lower_the_value_of_that_kind() {
    let (turn, tool) = (
        Gap::AfterAnswer(CallEnd::EndOfTurn),
        Gap::AfterAnswer(CallEnd::ToolCall),
    );
    let fresh = AgentGaps::default();
    let d = Forecaster::new(2.0, 1.0).discount(3_600_000);
    // Without expiries, a call expected in 30 s beats one expected in 9.5 min.
    let f = turn_fast_tool_slow(0);
    assert!(f.density(turn, 30_000, &d, &fresh) > f.density(tool, 30_000, &d, &fresh));
    // When 9 of 10 end-of-turn waits never end in a call, the sure call in
    // 9.5 min is worth more than the probable nothing, at this horizon.
    let g = turn_fast_tool_slow(9);
    assert!(g.density(turn, 30_000, &d, &fresh) < g.density(tool, 30_000, &d, &fresh));
    // Kinds that never ended silently keep their value exactly.
    assert_eq!(
        f.density(tool, 30_000, &d, &fresh),
        g.density(tool, 30_000, &d, &fresh)
    );
}

#[test]
fn an_agents_own_returns_do_not_hide_that_waits_may_never_end() {
    let turn = Gap::AfterAnswer(CallEnd::EndOfTurn);
    let d = Forecaster::new(2.0, 1.0).discount(600_000);
    let (mut f, mut g) = (turn_fast_tool_slow(0), turn_fast_tool_slow(0));
    // An agent that came back from 50 waits of its own; in `g`, as many
    // agents with the same recent history never came back.
    let (mut own_f, mut own_g) = (AgentGaps::default(), AgentGaps::default());
    for _ in 0..50 {
        f.record(turn, 60_000, &mut own_f);
        g.record(turn, 60_000, &mut own_g);
    }
    for _ in 0..50 {
        g.record_never(turn, &own_g);
    }
    // Its own history dominates the blend, yet the population's share of
    // such waits that never ended (1 in 2) still halves its expected hits,
    // and more so once it is overdue.
    for w in [10_000, 55_000] {
        let (plain, never) = (
            f.density(turn, w, &d, &own_f),
            g.density(turn, w, &d, &own_g),
        );
        assert!(never < 0.6 * plain, "waited {w}: {never} vs {plain}");
    }
    let drop = |w| g.density(turn, w, &d, &own_g) / f.density(turn, w, &d, &own_f);
    assert!(drop(55_000) < drop(10_000));
}
