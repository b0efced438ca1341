use super::*;
use std::collections::HashMap;

struct Fixture {
    subs: Subscriptions,
    interest: Interest,
    latest: HashMap<u64, u64>,
}

impl Fixture {
    fn new(latest: &[(u64, u64)]) -> Self {
        Fixture {
            subs: Subscriptions::default(),
            interest: Interest::default(),
            latest: latest.iter().copied().collect(),
        }
    }

    fn sub(&mut self, pairs: &[(u64, u64)], grant: &NsGrant, max: u64) -> SubscribeOutcome {
        let latest = self.latest.clone();
        subscribe(
            &mut self.subs,
            1,
            pairs,
            grant,
            max,
            &mut self.interest,
            |ns| latest.get(&ns).copied().unwrap_or(0),
        )
    }
}

#[test]
fn cursor_behind_equal_ahead() {
    let mut f = Fixture::new(&[(1, 10), (2, 10), (3, 10)]);
    let out = f.sub(
        &[(1, 5), (2, 10), (3, 11), (4, 0), (5, 1)],
        &NsGrant::All,
        100,
    );
    assert_eq!(out.changed, vec![(1, 10)]);
    assert_eq!(out.reset, vec![3, 5]);
    assert!(out.forbidden.is_empty() && out.too_many.is_empty());
    // RESET ended those subscriptions; the others are live.
    assert_eq!(f.subs.len(), 3);
    assert_eq!(f.interest.subscriptions(), 3);
}

#[test]
fn repeats_count_once_with_last_cursor() {
    let mut f = Fixture::new(&[(7, 9)]);
    let out = f.sub(&[(7, 9), (8, 0), (7, 3)], &NsGrant::All, 2);
    assert_eq!(out.changed, vec![(7, 9)]);
    assert_eq!(f.subs.len(), 2);
}

#[test]
fn resubscribe_with_lower_cursor_notifies_again() {
    let mut f = Fixture::new(&[(7, 9)]);
    assert_eq!(f.sub(&[(7, 1)], &NsGrant::All, 10).changed, vec![(7, 9)]);
    assert_eq!(f.sub(&[(7, 9)], &NsGrant::All, 10).changed, vec![]);
    assert_eq!(f.sub(&[(7, 2)], &NsGrant::All, 10).changed, vec![(7, 9)]);
    assert_eq!(f.subs.len(), 1);
}

#[test]
fn limits_and_grants() {
    let mut f = Fixture::new(&[]);
    let grant = NsGrant::list(vec![1, 2, 3, 4]);
    let out = f.sub(&[(1, 0), (9, 0), (2, 0), (3, 0), (4, 0)], &grant, 2);
    assert_eq!(out.forbidden, vec![9]);
    assert_eq!(out.too_many, vec![3, 4]);
    assert_eq!(f.subs.len(), 2);
    // Resubscribing a live one is not over the limit; freeing one makes room.
    assert!(f.sub(&[(1, 0)], &grant, 2).too_many.is_empty());
    unsubscribe(&mut f.subs, 1, &[1, 77], &mut f.interest);
    assert!(f.sub(&[(3, 0)], &grant, 2).too_many.is_empty());
    assert_eq!(f.interest.subscriptions(), 2);
    let frames: Vec<_> = out.frames().collect();
    assert_eq!(
        frames,
        vec![
            ServerFrame::Denied {
                code: Code::FORBIDDEN_NAMESPACE,
                ns: vec![9]
            },
            ServerFrame::Denied {
                code: Code::TOO_MANY_SUBSCRIPTIONS,
                ns: vec![3, 4]
            },
        ]
    );
}

#[test]
fn release_clears_interest() {
    let mut f = Fixture::new(&[]);
    f.sub(&[(1, 0), (2, 0)], &NsGrant::All, 10);
    f.subs.release(1, &mut f.interest);
    assert_eq!((f.interest.subscriptions(), f.subs.len()), (0, 0));
}
