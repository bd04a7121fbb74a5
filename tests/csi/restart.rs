//! Plugin restarts: mount children outlive a SIGKILLed plugin, dead FUSE
//! sessions are reported abnormal, re-established after a restart (and on
//! the next NodePublish), and volumes that cannot be recovered are reported.

use crate::support_csi;

use std::time::Duration;

use cachalot::csi::proto::*;
use support_csi::*;

fn stats_req(vol: &Volume, path: &std::path::Path) -> NodeGetVolumeStatsRequest {
    NodeGetVolumeStatsRequest {
        volume_id: vol.volume_id.clone(),
        volume_path: path.display().to_string(),
        staging_target_path: String::new(),
    }
}

/// A FUSE mount whose server died answers ENOTCONN, or ECONNABORTED when
/// the session asked the kernel for FUSE_ABORT_ERROR.
fn dead_errno(errno: Option<i32>) -> bool {
    matches!(errno, Some(libc::ENOTCONN) | Some(libc::ECONNABORTED))
}

fn kill9(pid: u32) {
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
    }
}

fn alive(pid: u32) -> bool {
    cachalot::csi::supervisor::pid_alive(pid)
}

async fn staged_and_published(
    env: &Env,
    c: &mut Clients,
    name: &str,
) -> (Volume, std::path::PathBuf, std::path::PathBuf) {
    let url = env.source_url();
    let vol = c.create(name, params(&[("source", &url)])).await;
    let staging = env.staging(name);
    let target = env.target(&format!("pod-a-{name}"));
    c.stage(&vol, &staging).await;
    c.publish(&vol, &staging, &target, false).await;
    std::fs::write(target.join("before.txt"), b"written before the restart").unwrap();
    (vol, staging, target)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_plugin_leaves_mounts_serving_and_adopts_them() {
    let mut env = Env::new();
    let mut c = env.clients().await;
    let (vol, staging, target) = staged_and_published(&env, &mut c, "pvc-k").await;
    let children = env.mount_children();
    assert_eq!(children.len(), 1);
    drop(c);

    env.kill_plugin();
    assert!(
        alive(children[0]),
        "mount child survives kill -9 of the plugin"
    );
    assert_eq!(
        std::fs::read(target.join("before.txt")).unwrap(),
        b"written before the restart",
        "running pods keep their volume"
    );

    env.start_plugin();
    let mut c = env.clients().await;
    assert_eq!(env.mount_children(), children, "adopted, not restarted");
    let target_b = env.target("pod-b");
    c.publish(&vol, &staging, &target_b, false).await;
    assert_eq!(
        std::fs::read(target_b.join("before.txt")).unwrap(),
        b"written before the restart"
    );
    std::fs::write(target_b.join("after.txt"), b"new pod").unwrap();
    assert!(env.source().join("pvc-k/after.txt").exists());
    let st = c
        .node
        .node_get_volume_stats(stats_req(&vol, &target_b))
        .await
        .unwrap()
        .into_inner();
    assert!(!st.volume_condition.unwrap().abnormal);

    for t in [&target, &target_b] {
        c.unpublish(&vol, t).await;
    }
    c.unstage(&vol, &staging).await;
    eventually(
        "adopted child stopped by unstage",
        Duration::from_secs(15),
        || !alive(children[0]),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_session_is_abnormal_then_healed_by_publish() {
    let env = Env::new();
    let mut c = env.clients().await;
    let (vol, staging, target) = staged_and_published(&env, &mut c, "pvc-d").await;
    let child = env.mount_children()[0];
    kill9(child);
    eventually("child gone", Duration::from_secs(5), || !alive(child));
    let errno = std::fs::read(target.join("before.txt"))
        .unwrap_err()
        .raw_os_error();
    assert!(dead_errno(errno), "{errno:?}");

    let st = c
        .node
        .node_get_volume_stats(stats_req(&vol, &target))
        .await
        .unwrap()
        .into_inner();
    let cond = st.volume_condition.unwrap();
    assert!(cond.abnormal, "{cond:?}");
    assert!(cond.message.contains("dead"), "{cond:?}");

    // The next pod's NodePublish re-establishes the session (and re-binds
    // the old target).
    let target_b = env.target("pod-b");
    c.publish(&vol, &staging, &target_b, false).await;
    assert_eq!(
        std::fs::read(target_b.join("before.txt")).unwrap(),
        b"written before the restart"
    );
    assert_eq!(
        std::fs::read(target.join("before.txt")).unwrap(),
        b"written before the restart"
    );
    let new_children = env.mount_children();
    assert_eq!(new_children.len(), 1);
    assert_ne!(new_children[0], child);
    let st = c
        .node
        .node_get_volume_stats(stats_req(&vol, &target))
        .await
        .unwrap()
        .into_inner();
    assert!(!st.volume_condition.unwrap().abnormal);

    for t in [&target, &target_b] {
        c.unpublish(&vol, t).await;
    }
    c.unstage(&vol, &staging).await;
    eventually("child stopped", Duration::from_secs(15), || {
        env.mount_children().is_empty()
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_after_plugin_and_children_died_re_establishes_mounts() {
    let mut env = Env::new();
    let mut c = env.clients().await;
    let (vol, staging, target) = staged_and_published(&env, &mut c, "pvc-r").await;
    let (vol2, staging2, target2) = staged_and_published(&env, &mut c, "pvc-lost").await;
    drop(c);
    // Like a container restart: the plugin and every child die together.
    env.kill_plugin();
    for pid in env.mount_children() {
        kill9(pid);
    }
    eventually("children gone", Duration::from_secs(5), || {
        env.mount_children().is_empty()
    });
    let errno = std::fs::read(target.join("before.txt"))
        .unwrap_err()
        .raw_os_error();
    assert!(dead_errno(errno), "{errno:?}");
    // The second volume's directory disappears meanwhile: not recoverable.
    std::fs::rename(env.source().join("pvc-lost"), env.path("moved-away")).unwrap();

    env.start_plugin();
    let mut c = env.clients().await;
    assert!(is_mounted(&staging));
    assert_eq!(
        env.mount_children().len(),
        1,
        "re-established the recoverable volume only"
    );
    assert_eq!(
        std::fs::read(staging.join("before.txt")).unwrap(),
        b"written before the restart"
    );
    // The old target was re-bound to the new session.
    assert_eq!(
        std::fs::read(target.join("before.txt")).unwrap(),
        b"written before the restart"
    );
    let target_b = env.target("pod-b");
    c.publish(&vol, &staging, &target_b, true).await;
    assert_eq!(
        std::fs::read(target_b.join("before.txt")).unwrap(),
        b"written before the restart"
    );
    assert_eq!(
        std::fs::write(target_b.join("x"), b"x")
            .unwrap_err()
            .raw_os_error(),
        Some(libc::EROFS)
    );

    let st = c
        .node
        .node_get_volume_stats(stats_req(&vol2, &staging2))
        .await
        .unwrap()
        .into_inner();
    let cond = st.volume_condition.unwrap();
    assert!(cond.abnormal, "unrecoverable volume is abnormal: {cond:?}");
    assert!(cond.message.contains("re-mount failed"), "{cond:?}");
    assert!(std::fs::read_to_string(env.log_file())
        .unwrap()
        .contains("could not re-establish"));

    for t in [&target, &target_b] {
        c.unpublish(&vol, t).await;
    }
    c.unstage(&vol, &staging).await;
    c.unpublish(&vol2, &target2).await;
    c.unstage(&vol2, &staging2).await;
    assert!(!is_mounted(&staging) && !is_mounted(&target2));
    eventually("children stopped", Duration::from_secs(15), || {
        env.mount_children().is_empty()
    });
}
