use super::*;
use std::io::Write;
use std::path::Path;

mod compaction;

fn open(dir: &Path) -> (Journal, Arc<LatestTable>, mpsc::Receiver<Batch>) {
    open_with(dir, true)
}

fn open_with(dir: &Path, sync: bool) -> (Journal, Arc<LatestTable>, mpsc::Receiver<Batch>) {
    let latest = Arc::new(LatestTable::new());
    let (tx, rx) = mpsc::channel(16);
    let cfg = JournalConfig::new(dir, sync);
    (
        Journal::open(&cfg, latest.clone(), vec![tx]).unwrap(),
        latest,
        rx,
    )
}

/// The active segment: the highest-numbered one.
fn active_segment(dir: &Path) -> std::path::PathBuf {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("segment-"))
        .collect();
    names.sort();
    dir.join(names.last().expect("a segment"))
}

#[tokio::test]
async fn survives_restart_and_fans_out_only_raises() {
    restart_and_raises(true).await;
}

/// `--journal-no-sync` appends on the caller's task instead of the writer thread: the same log,
/// the same table and the same fan-out.
#[tokio::test]
async fn without_sync_appends_inline_with_the_same_effects() {
    restart_and_raises(false).await;
}

/// hyper drops a handler's future when its client goes away; an append already under way must
/// still reach the fan-out, or a change would be on disk and in the table but never delivered.
#[tokio::test]
async fn without_sync_a_dropped_publish_is_still_fanned_out() {
    let dir = tempfile::tempdir().unwrap();
    let (j, latest, mut rx) = open_with(dir.path(), false);
    // A worker that is behind: its queue (16 here) is full, so the next fan-out has to wait.
    for ns in 0..16 {
        j.append(vec![(100 + ns, 1)]).await.unwrap();
    }
    // One poll starts the append (written, raised, waiting for the worker); then it is dropped.
    let mut append = Box::pin(j.append(vec![(3, 9)]));
    let first = std::future::poll_fn(|cx| std::task::Poll::Ready(append.as_mut().poll(cx))).await;
    assert!(
        first.is_pending(),
        "the append finished within its first poll"
    );
    drop(append);
    for ns in 0..16 {
        assert_eq!(&rx.recv().await.unwrap().changes[..], &[(100 + ns, 1)]);
    }
    let batch = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv())
        .await
        .expect("fanned out")
        .unwrap();
    assert_eq!(&batch.changes[..], &[(3, 9)]);
    assert_eq!(latest.get(3), 9);
}

async fn restart_and_raises(sync: bool) {
    let dir = tempfile::tempdir().unwrap();
    {
        let (j, latest, mut rx) = open_with(dir.path(), sync);
        j.append(vec![(1, 5), (2, 3), (1, 7)]).await.unwrap();
        assert_eq!(latest.get(1), 7);
        let b = rx.recv().await.unwrap();
        assert_eq!(&b.changes[..], &[(1, 5), (2, 3), (1, 7)]);
        j.append(vec![(1, 6), (2, 4)]).await.unwrap();
        assert_eq!(&rx.recv().await.unwrap().changes[..], &[(2, 4)]);
        // Nothing raised: nothing fanned out.
        j.append(vec![(1, 7)]).await.unwrap();
        assert!(rx.try_recv().is_err());
    }
    let (_j, latest, _rx) = open_with(dir.path(), sync);
    assert_eq!((latest.get(1), latest.get(2), latest.get(3)), (7, 4, 0));
}

#[tokio::test]
async fn torn_tail_is_cut_and_the_rest_kept() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (j, _, _rx) = open(dir.path());
        j.append(vec![(9, 1)]).await.unwrap();
    }
    let mut torn = Vec::new();
    record::encode_batch(&[(9, 2), (10, 1)], &mut torn);
    torn.truncate(torn.len() - 3);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(active_segment(dir.path()))
        .unwrap();
    f.write_all(&torn).unwrap();
    drop(f);
    let (j, latest, _rx) = open(dir.path());
    assert_eq!((latest.get(9), latest.get(10)), (1, 0));
    // Appends after the cut are readable on the next start.
    j.append(vec![(10, 4)]).await.unwrap();
    drop(j);
    let (_j, latest, _rx) = open(dir.path());
    assert_eq!((latest.get(9), latest.get(10)), (1, 4));
}

/// A data directory of the single-log version (`journal.log`) is read, then replaced by a
/// snapshot and a segment.
#[tokio::test]
async fn the_legacy_log_is_replayed_then_removed() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = Vec::new();
    record::encode_batch(&[(1, 4), (2, 9)], &mut bytes);
    std::fs::write(dir.path().join("journal.log"), &bytes).unwrap();
    let (j, latest, _rx) = open(dir.path());
    assert_eq!((latest.get(1), latest.get(2)), (4, 9));
    assert!(!dir.path().join("journal.log").exists());
    j.append(vec![(1, 5)]).await.unwrap();
    drop(j);
    let (_j, latest, _rx) = open(dir.path());
    assert_eq!((latest.get(1), latest.get(2)), (5, 9));
}
