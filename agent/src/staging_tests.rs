use super::*;

fn seg() -> WalSegmentSize {
    WalSegmentSize::new(1 << 20).unwrap()
}

#[test]
fn writes_split_at_segment_boundaries_and_complete_durably() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = StagingWriter::new(dir.path(), seg()).unwrap();
    let tli = TimelineId(1);
    let start = SegNo(3).start_lsn(seg());
    let data: Vec<u8> = (0..(1u32 << 20) + 1000).map(|i| (i % 251) as u8).collect();
    let done = w.write(tli, start, &data).unwrap();
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].segno, SegNo(3));
    let complete = fs::read(&done[0].path).unwrap();
    assert_eq!(complete, data[..1 << 20]);
    assert_eq!(w.position(), Some(SegNo(4).start_lsn(seg()) + 1000));
    let partial = w.wal_dir().join(format!(
        "{}{PARTIAL_SUFFIX}",
        segment_file_name(tli, SegNo(4), seg())
    ));
    let bytes = fs::read(&partial).unwrap();
    assert_eq!(bytes.len(), 1 << 20, "partial files are preallocated");
    assert_eq!(&bytes[..1000], &data[1 << 20..]);
    assert!(bytes[1000..].iter().all(|b| *b == 0));
}

#[test]
fn a_full_disk_is_told_from_other_errors() {
    let io = |code| StagingError::Io {
        op: "write",
        path: PathBuf::from("x"),
        source: io::Error::from_raw_os_error(code),
    };
    assert!(io(libc::ENOSPC).is_no_space());
    assert!(io(libc::EDQUOT).is_no_space());
    assert!(!io(libc::EIO).is_no_space());
    assert!(!io(libc::ENOSPC).is_failed_fsync());
    let fsync = StagingError::Io {
        op: "fsync",
        path: PathBuf::from("x"),
        source: io::Error::from_raw_os_error(libc::ENOSPC),
    };
    assert!(fsync.is_no_space() && fsync.is_failed_fsync());
}

#[test]
fn an_abandoned_segment_is_written_again_from_its_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = StagingWriter::new(dir.path(), seg()).unwrap();
    let start = SegNo(4).start_lsn(seg());
    w.write(TimelineId(1), start, &[3; 500]).unwrap();
    assert_eq!(w.position(), Some(start + 500));
    assert_eq!(w.abandon(), Some(start));
    assert_eq!(w.position(), None);
    w.write(TimelineId(1), start, &[4; 100]).unwrap();
    let view = w.close_partial().unwrap().unwrap();
    let mut buf = vec![0u8; 500];
    view.file.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(&buf[..100], &[4; 100]);
    assert!(
        buf[100..].iter().all(|b| *b == 0),
        "the abandoned bytes survived"
    );
}

#[test]
fn position_stays_at_a_segment_boundary_after_a_completion() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = StagingWriter::new(dir.path(), seg()).unwrap();
    let start = SegNo(7).start_lsn(seg());
    let done = w.write(TimelineId(1), start, &vec![1; 1 << 20]).unwrap();
    assert_eq!(done.len(), 1);
    assert_eq!(w.position(), Some(SegNo(8).start_lsn(seg())));
    assert!(w.take_completed().is_empty());
    w.close_partial().unwrap();
    assert_eq!(w.position(), None);
}

#[test]
fn a_gap_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = StagingWriter::new(dir.path(), seg()).unwrap();
    let start = SegNo(1).start_lsn(seg());
    w.write(TimelineId(1), start, &[1; 100]).unwrap();
    let err = w.write(TimelineId(1), start + 200, &[1; 10]).unwrap_err();
    assert!(matches!(err, StagingError::Gap { .. }), "{err}");
}

#[test]
fn sync_and_view_report_the_fsynced_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = StagingWriter::new(dir.path(), seg()).unwrap();
    let start = SegNo(2).start_lsn(seg());
    w.write(TimelineId(1), start, &[7; 300]).unwrap();
    assert_eq!(w.partial_view().unwrap().unwrap().len, 0);
    assert_eq!(w.sync().unwrap(), Some(start + 300));
    let view = w.partial_view().unwrap().unwrap();
    assert_eq!((view.segno, view.len), (SegNo(2), 300));
    let mut buf = [0u8; 300];
    view.file.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(buf, [7; 300]);
}

#[test]
fn rewriting_a_segment_clears_what_a_previous_run_left() {
    let dir = tempfile::tempdir().unwrap();
    let start = SegNo(2).start_lsn(seg());
    let mut w = StagingWriter::new(dir.path(), seg()).unwrap();
    w.write(TimelineId(1), start, &[9; 300]).unwrap();
    w.close_partial().unwrap();
    let mut w = StagingWriter::new(dir.path(), seg()).unwrap();
    w.write(TimelineId(1), start, &[5; 100]).unwrap();
    w.sync().unwrap();
    let name = format!(
        "{}{PARTIAL_SUFFIX}",
        segment_file_name(TimelineId(1), SegNo(2), seg())
    );
    let bytes = fs::read(w.wal_dir().join(name)).unwrap();
    assert_eq!(&bytes[..100], &[5; 100]);
    assert!(bytes[100..].iter().all(|b| *b == 0), "stale bytes survived");
}

#[test]
fn scan_finds_the_resume_point() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = StagingWriter::new(dir.path(), seg()).unwrap();
    let start = SegNo(5).start_lsn(seg());
    w.write(TimelineId(2), start, &vec![1; (1 << 20) + 10])
        .unwrap();
    fs::write(w.wal_dir().join("junk.tmp"), b"x").unwrap();
    let scan = StagingScan::read(dir.path(), seg()).unwrap();
    assert_eq!(scan.complete.len(), 1);
    assert_eq!(scan.partials.len(), 1);
    assert_eq!(
        scan.resume_point(seg()),
        Some((TimelineId(2), SegNo(6).start_lsn(seg())))
    );
    assert_eq!(
        StagingScan::read(&dir.path().join("none"), seg()).unwrap(),
        StagingScan::default()
    );
}

#[test]
fn a_view_taken_before_a_rewrite_keeps_reading_its_own_bytes() {
    // A reconnect rewrites the segment being filled from its start while the previous
    // session's last `.partial` view may still be queued for upload.
    let dir = tempfile::tempdir().unwrap();
    let start = SegNo(2).start_lsn(seg());
    let mut w = StagingWriter::new(dir.path(), seg()).unwrap();
    w.write(TimelineId(1), start, &[9; 300]).unwrap();
    let view = w.close_partial().unwrap().unwrap();
    w.write(TimelineId(1), start, &[5; 100]).unwrap();
    let mut buf = [0u8; 300];
    view.file.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(buf, [9; 300], "the queued view read another session's file");
}
