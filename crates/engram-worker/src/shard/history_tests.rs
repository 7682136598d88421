//! Write positions and deltas (`history.rs`) on real shard files.

use super::tests::{bulk_segment, contents, open_l2_4d as open, rows, small_params, upsert};
use super::*;

fn at(epoch: u64, seq: u64) -> WritePosition {
    WritePosition { epoch, seq }
}

#[test]
fn positions_follow_writes_and_survive_reopen_and_rotations() {
    let dir = tempfile::tempdir().unwrap();
    let params = small_params(50);
    let data = rows(120, 4);
    let shard = open(dir.path(), &params);
    assert_eq!(shard.position(), Some(at(0, 0)), "every copy starts here");
    shard.write(vec![upsert(0, "a", &data[0])]).unwrap();
    assert_eq!(shard.position(), Some(at(0, 1)));
    shard
        .write_at(vec![upsert(1, "a", &data[1])], Stamp::At(at(3, 2)))
        .unwrap();
    assert_eq!(shard.position(), Some(at(3, 2)));
    // Empty writes take no position.
    shard.write_at(Vec::new(), Stamp::At(at(3, 3))).unwrap();
    assert_eq!(shard.position(), Some(at(3, 2)));
    drop(shard);
    let shard = open(dir.path(), &params);
    assert_eq!(shard.position(), Some(at(3, 2)));
    // Sealing (a WAL rotation) keeps the history where it is.
    for id in 2..60u64 {
        shard
            .write_at(
                vec![upsert(id, "b", &data[id as usize])],
                Stamp::At(at(3, id + 1)),
            )
            .unwrap();
    }
    assert_eq!(shard.sealed_segments(), 1);
    assert_eq!(shard.position(), Some(at(3, 60)));
    drop(shard);
    assert_eq!(open(dir.path(), &params).position(), Some(at(3, 60)));
}

#[test]
fn writes_out_of_order_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = rows(4, 4);
    let shard = open(dir.path(), &small_params(1000));
    shard
        .write_at(vec![upsert(0, "a", &data[0])], Stamp::At(at(1, 1)))
        .unwrap();
    let gap = shard.write_at(vec![upsert(1, "a", &data[1])], Stamp::At(at(1, 3)));
    assert!(
        matches!(gap, Err(WorkerError::OutOfOrder { .. })),
        "{gap:?}"
    );
    let behind = shard.write_at(vec![upsert(1, "a", &data[1])], Stamp::At(at(0, 0)));
    assert!(matches!(behind, Err(WorkerError::OutOfOrder { .. })));
    assert_eq!(shard.len(), 1);
    assert_eq!(shard.position(), Some(at(1, 1)));
    // The rest of a write logged as several records, then the next write
    // under a newer epoch.
    shard
        .write_at(vec![WalOp::Delete { id: 0 }], Stamp::At(at(1, 1)))
        .unwrap();
    shard
        .write_at(vec![upsert(2, "a", &data[2])], Stamp::At(at(4, 2)))
        .unwrap();
    assert_eq!(shard.position(), Some(at(4, 2)));
}

#[test]
fn a_copy_behind_gets_exactly_the_writes_it_lacks() {
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let params = small_params(1000);
    let data = rows(200, 4);
    let primary = open(dirs.0.path(), &params);
    let replica = open(dirs.1.path(), &params);
    // What a primary does: a write's parts as several records at one
    // position, the replica gets them as one record; the replica misses
    // every write from seq 21 on.
    for seq in 1..=40u64 {
        let id = seq * 3;
        let mut ops = vec![upsert(id, "x", &data[id as usize])];
        primary
            .write_at(ops.clone(), Stamp::At(at(2, seq)))
            .unwrap();
        if seq % 4 == 0 {
            let delete = vec![WalOp::Delete { id: id - 6 }];
            primary
                .write_at(delete.clone(), Stamp::At(at(2, seq)))
                .unwrap();
            ops.extend(delete);
        }
        if seq <= 20 {
            replica.write_at(ops, Stamp::At(at(2, seq))).unwrap();
        }
    }
    assert_eq!(replica.position(), Some(at(2, 20)));
    let delta = primary.history_since(at(2, 20)).unwrap().unwrap();
    assert_eq!(delta.writes.len(), 20, "one entry per write, parts joined");
    assert_eq!(delta.writes.last().map(|(p, _)| *p), Some(at(2, 40)));
    assert_eq!(delta.ops(), 20 + 5);
    replica.apply_history(delta).unwrap();
    assert_eq!(replica.position(), primary.position());
    assert_eq!(contents(&replica), contents(&primary));

    // A copy at the primary's position needs nothing.
    let none = primary.history_since(at(2, 40)).unwrap().unwrap();
    assert!(none.writes.is_empty());
    // A position this history never had (another primary's write at the
    // same sequence number), or one ahead of it: no delta.
    assert_eq!(primary.history_since(at(1, 20)).unwrap(), None);
    assert_eq!(primary.history_since(at(2, 41)).unwrap(), None);
    // A delta reaches only a copy at its start.
    let stale = primary.history_since(at(2, 30)).unwrap().unwrap();
    assert!(replica.apply_history(stale).is_err());
    assert_eq!(contents(&replica), contents(&primary));
}

#[test]
fn a_delta_never_reaches_back_past_the_wal_or_across_an_attach() {
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let params = small_params(30);
    let data = rows(200, 4);
    let primary = open(dirs.0.path(), &params);
    for seq in 1..=45u64 {
        primary
            .write_at(
                vec![upsert(seq, "x", &data[seq as usize])],
                Stamp::At(at(1, seq)),
            )
            .unwrap();
    }
    // Sealed at 30 rows: the current WAL starts at seq 30.
    assert_eq!(primary.sealed_segments(), 1);
    assert_eq!(primary.history_since(at(1, 29)).unwrap(), None);
    let from_seal = primary.history_since(at(1, 30)).unwrap().unwrap();
    assert_eq!(from_seal.writes.len(), 15);
    // An attached segment's rows are in no record: a new start.
    let staged = dirs.1.path().join("staged");
    bulk_segment(&staged, &[150, 151, 152], &data, 4, "bulk", &params);
    primary.attach_at(&staged, Stamp::At(at(1, 46))).unwrap();
    assert_eq!(primary.position(), Some(at(1, 46)));
    assert_eq!(primary.history_since(at(1, 45)).unwrap(), None);
    assert!(
        primary
            .history_since(at(1, 46))
            .unwrap()
            .unwrap()
            .writes
            .is_empty()
    );
    primary
        .write_at(vec![upsert(160, "x", &data[160])], Stamp::At(at(1, 47)))
        .unwrap();
    assert_eq!(
        primary
            .history_since(at(1, 46))
            .unwrap()
            .unwrap()
            .writes
            .len(),
        1
    );
}

#[test]
fn a_copy_rebuilt_by_transfer_has_no_position_until_the_transfer_ends() {
    let dir = tempfile::tempdir().unwrap();
    let params = small_params(1000);
    let data = rows(10, 4);
    let shard = open(dir.path(), &params);
    shard
        .write_at(vec![upsert(1, "a", &data[1])], Stamp::Unordered)
        .unwrap();
    assert_eq!(shard.position(), None);
    assert_eq!(shard.history_since(at(0, 0)).unwrap(), None);
    // Killed here: still unknown when reopened.
    drop(shard);
    let shard = open(dir.path(), &params);
    assert_eq!(shard.position(), None);
    shard
        .write_at(vec![upsert(2, "a", &data[2])], Stamp::Unordered)
        .unwrap();
    shard.set_position(at(7, 90)).unwrap();
    drop(shard);
    let shard = open(dir.path(), &params);
    assert_eq!(shard.position(), Some(at(7, 90)));
    // Its history starts there: the next write follows it.
    shard
        .write_at(vec![upsert(3, "a", &data[3])], Stamp::At(at(7, 91)))
        .unwrap();
    let delta = shard.history_since(at(7, 90)).unwrap().unwrap();
    assert_eq!(delta.writes.len(), 1);
}

#[test]
fn a_pinned_history_defers_seals_up_to_a_bound() {
    let dir = tempfile::tempdir().unwrap();
    let params = small_params(20);
    let data = rows(200, 4);
    let shard = open(dir.path(), &params);
    let write = |seq: u64| {
        shard
            .write_at(
                vec![upsert(seq, "x", &data[seq as usize])],
                Stamp::At(at(1, seq)),
            )
            .unwrap()
    };
    write(1);
    let pin = shard.pin_history();
    for seq in 2..=60 {
        write(seq);
    }
    assert_eq!(shard.sealed_segments(), 0, "seals wait for the pin");
    let delta = shard.history_since(at(1, 1)).unwrap().unwrap();
    assert_eq!(
        delta.writes.len(),
        59,
        "the writes since the pin are in the WAL"
    );
    // Past four times the threshold the growing segment seals anyway.
    for seq in 61..=80 {
        write(seq);
    }
    assert_eq!(shard.sealed_segments(), 1);
    assert_eq!(shard.history_since(at(1, 1)).unwrap(), None);
    drop(pin);
    write(81);
    assert_eq!(shard.position(), Some(at(1, 81)));
}
