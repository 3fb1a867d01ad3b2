//! batch/v1 Jobs and CronJobs on a real node, driven with kubectl as a user drives them:
//! parallelism and completions, Indexed completion, podFailurePolicy and backoffLimit,
//! ttlSecondsAfterFinished, `kubectl create job|cronjob` (typed, so protobuf) and
//! `kubectl create job --from=cronjob/…`, and a CronJob firing on its schedule.

use nodeless_tests::images::BUSYBOX;
use nodeless_tests::{Nodeless, eventually};

const V: &str = "1.33";

fn job(name: &str, spec: &str, script: &str) -> String {
    format!(
        "apiVersion: batch/v1\nkind: Job\nmetadata: {{name: {name}}}\nspec:\n{spec}  template:\n    spec:\n      restartPolicy: Never\n      containers:\n      - name: main\n        image: {BUSYBOX}\n        command: [sh, -c, '{script}']\n"
    )
}

fn get(n: &Nodeless, what: &str, path: &str) -> String {
    n.kubectl_ok(V, &["get", what, "-o", &format!("jsonpath={path}")])
}

#[test]
fn jobs_and_cronjobs_run_to_completion() {
    let n = Nodeless::start_with_node(&[]).unwrap();
    let kc = n.kubeconfig();
    let apply = |yaml: &str| {
        let out = n.kubectl_with(V, &kc, &["apply", "-f", "-"], Some(yaml));
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    apply(&job("six", "  parallelism: 3\n  completions: 6\n", "sleep 1"));
    apply(&job(
        "indexed",
        "  parallelism: 3\n  completions: 3\n  completionMode: Indexed\n  ttlSecondsAfterFinished: 3\n",
        "test -n \"$JOB_COMPLETION_INDEX\" && test \"$(hostname)\" = indexed-$JOB_COMPLETION_INDEX",
    ));
    apply(&job(
        "policy",
        "  backoffLimit: 5\n  podFailurePolicy:\n    rules:\n    - action: FailJob\n      onExitCodes: {containerName: main, operator: In, values: [42]}\n",
        "exit 42",
    ));
    apply(&job("limit", "  backoffLimit: 0\n", "exit 1"));
    let out = n.kubectl_ok(
        V,
        &[
            "create",
            "job",
            "typed",
            &format!("--image={BUSYBOX}"),
            "--",
            "sh",
            "-c",
            "exit 0",
        ],
    );
    assert!(out.contains("job.batch/typed created"), "{out}");

    n.kubectl_ok(
        V,
        &[
            "wait",
            "--for=condition=complete",
            "job/six",
            "job/typed",
            "--timeout=180s",
        ],
    );
    assert_eq!(get(&n, "job/six", "{.status.succeeded}"), "6");
    let pods = n.kubectl_ok(
        V,
        &[
            "get",
            "pods",
            "-l",
            "job-name=six",
            "-o",
            "jsonpath={.items[*].status.phase}",
        ],
    );
    assert_eq!(
        pods.split_whitespace().filter(|p| *p == "Succeeded").count(),
        6,
        "{pods}"
    );
    assert_eq!(
        pods.split_whitespace().count(),
        6,
        "no more pods than completions: {pods}"
    );
    // Never more than three at once: at each pod's start, count the pods running.
    let spans = n.kubectl_ok(
        V,
        &[
            "get",
            "pods",
            "-l",
            "job-name=six",
            "-o",
            "jsonpath={range .items[*]}{.status.containerStatuses[0].state.terminated.startedAt} {.status.containerStatuses[0].state.terminated.finishedAt}{\"\\n\"}{end}",
        ],
    );
    let spans: Vec<(String, String)> = spans
        .lines()
        .filter_map(|l| l.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())))
        .collect();
    for (start, _) in &spans {
        let running = spans.iter().filter(|(a, b)| a <= start && b > start).count();
        assert!(running <= 3, "{running} pods ran at once at {start}: {spans:?}");
    }
    let table = n.kubectl_ok(V, &["get", "job", "six"]);
    assert!(table.contains("Complete") && table.contains("6/6"), "{table}");

    n.kubectl_ok(
        V,
        &[
            "wait",
            "--for=condition=failed",
            "job/policy",
            "job/limit",
            "--timeout=120s",
        ],
    );
    assert_eq!(
        get(&n, "job/policy", "{.status.conditions[?(@.type==\"Failed\")].reason}"),
        "PodFailurePolicy"
    );
    assert_eq!(
        get(&n, "job/policy", "{.status.failed}"),
        "1",
        "the FailJob rule ends it at once"
    );
    assert_eq!(
        get(&n, "job/limit", "{.status.conditions[?(@.type==\"Failed\")].reason}"),
        "BackoffLimitExceeded"
    );

    // Every index ran once, knowing its index; the finished Job then goes after its TTL.
    eventually("the Indexed Job completes and is removed after its TTL", 120, || {
        !n.kubectl(V, &["get", "job", "indexed"]).status.success()
    });

    // A CronJob made the typed way fires at the next minute; a Job made from it by hand runs too.
    let out = n.kubectl_ok(
        V,
        &[
            "create",
            "cronjob",
            "tick",
            &format!("--image={BUSYBOX}"),
            "--schedule=* * * * *",
            "--",
            "sh",
            "-c",
            "exit 0",
        ],
    );
    assert!(out.contains("cronjob.batch/tick created"), "{out}");
    let out = n.kubectl_ok(V, &["create", "job", "by-hand", "--from=cronjob/tick"]);
    assert!(out.contains("job.batch/by-hand created"), "{out}");
    n.kubectl_ok(
        V,
        &["wait", "--for=condition=complete", "job/by-hand", "--timeout=120s"],
    );
    // The Job made by hand is owned by the CronJob too (kubectl sets the reference): the one the
    // schedule makes is named after its minute, `tick-<minutes>`.
    eventually("the CronJob creates a Job on its schedule", 130, || {
        let jobs = get(&n, "jobs", "{.items[*].metadata.name}");
        jobs.split_whitespace()
            .any(|j| j.strip_prefix("tick-").is_some_and(|m| m.parse::<u64>().is_ok()))
    });
    eventually("the CronJob records when it last ran", 30, || {
        !get(&n, "cronjob/tick", "{.status.lastScheduleTime}").is_empty()
    });
    let table = n.kubectl_ok(V, &["get", "cronjob", "tick"]);
    assert!(table.contains("* * * * *"), "{table}");

    // Refusals name the field.
    let bad = n.kubectl_with(
        V,
        &kc,
        &["apply", "-f", "-"],
        Some(&job("bad", "", "true").replace("restartPolicy: Never", "restartPolicy: Always")),
    );
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("spec.template.spec.restartPolicy"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    let bad = n.kubectl(
        V,
        &[
            "create",
            "cronjob",
            "bad",
            &format!("--image={BUSYBOX}"),
            "--schedule=61 * * * *",
        ],
    );
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("spec.schedule"),
        "{bad:?}"
    );
}
