use super::*;

/// What an OS crash can lose is a directory entry not yet synced into its parent: every
/// directory created on the way to a new `date=` partition is synced into its parent.
#[test]
fn new_partition_directories_are_created_durably() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("processed/date=2026-12-01");
    assert_eq!(
        create_dir_durably(&dir).unwrap(),
        vec![root.path().join("processed"), dir.clone()]
    );
    assert!(dir.is_dir());
    assert!(
        create_dir_durably(&dir).unwrap().is_empty(),
        "nothing new, nothing synced"
    );
}

#[tokio::test]
async fn create_never_overwrites_and_replace_does() {
    let root = tempfile::tempdir().unwrap();
    let store = Store::from_url(&url::Url::from_directory_path(root.path()).unwrap(), &[]).unwrap();
    store.prepare().unwrap();
    let key = "raw/date=2026-12-01/a.parquet";
    assert_eq!(store.size(key).await.unwrap(), None);
    assert_eq!(
        store.create(key, Bytes::from_static(b"one")).await.unwrap(),
        Created::New
    );
    assert_eq!(
        store
            .create(key, Bytes::from_static(b"two!"))
            .await
            .unwrap(),
        Created::Existed
    );
    assert_eq!(&store.read(key).await.unwrap()[..], b"one");
    store
        .replace(key, Bytes::from_static(b"three"))
        .await
        .unwrap();
    assert_eq!(store.size(key).await.unwrap(), Some(5));
    let staging: Vec<_> = std::fs::read_dir(root.path().join(STAGING_DIR))
        .unwrap()
        .collect();
    assert!(staging.is_empty(), "no temporary left behind: {staging:?}");
}

#[test]
fn stale_temporaries_go_and_fresh_ones_stay() {
    let root = tempfile::tempdir().unwrap();
    let store = Store::Local(root.path().to_path_buf());
    store.prepare().unwrap();
    std::fs::write(root.path().join(STAGING_DIR).join("x.tmp"), b"x").unwrap();
    assert_eq!(
        store
            .remove_stale_temporaries(Duration::from_secs(3600))
            .unwrap(),
        0
    );
    assert_eq!(store.remove_stale_temporaries(Duration::ZERO).unwrap(), 1);
}
