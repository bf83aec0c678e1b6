//! Replays every saved input — seed corpora and fixed crashes — through its
//! target: a regression check that runs in seconds.

use arena_fuzz::{read_dir_files, root, run_guarded, TARGETS};

#[test]
fn corpus_and_crashes_replay_cleanly() {
    let mut failures = Vec::new();
    let mut n = 0;
    for t in TARGETS {
        for dir in ["corpus", "crashes"] {
            for (path, data) in read_dir_files(&root().join(dir).join(t.name)) {
                n += 1;
                if let Err(msg) = run_guarded(t, &data) {
                    failures.push(format!("{}: {msg}", path.display()));
                }
            }
        }
    }
    arena_fuzz::targets::cleanup();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Every target has seeds: an empty corpus would make this test vacuous.
    for t in TARGETS {
        assert!(
            !read_dir_files(&root().join("corpus").join(t.name)).is_empty(),
            "no seeds for {}",
            t.name
        );
    }
    assert!(n >= TARGETS.len());
}
