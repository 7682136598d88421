//! The deployment files (deploy/compose.yml, deploy/k8s/, deploy/docker/)
//! cannot run on CI machines, so this keeps them honest: every config file
//! they use loads and validates through the real loader, every
//! `ENGRAM_SECTION__KEY` variable they set names a real config key and,
//! applied with its value, still gives a valid config, and every config
//! file they reference exists.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use figment::value::Value as FigmentValue;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use common::repo_root;
use engram_core::config::EngramConfig;

fn deploy() -> PathBuf {
    repo_root().join("deploy")
}

fn tomls(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

/// `(NAME, value)` of every `ENGRAM_X__Y` variable set in a YAML file,
/// written `ENGRAM_X__Y: value` (compose) or `export ENGRAM_X__Y=value` (k8s).
fn variables(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(start) = line.find("ENGRAM_") else {
            continue;
        };
        let rest = &line[start..];
        let end = rest
            .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(rest.len());
        let name = &rest[..end];
        if !name.contains("__") {
            continue;
        }
        let value = rest[end..]
            .trim_start_matches([':', '='])
            .trim()
            .trim_end_matches(';')
            .trim_matches('"')
            .to_string();
        out.push((name.to_string(), value));
    }
    out
}

/// The config file at `path` with `variables` applied as the loader
/// applies environment variables.
fn load_with(path: &Path, variables: &[(String, String)]) -> EngramConfig {
    let mut figment =
        Figment::from(Serialized::defaults(EngramConfig::default())).merge(Toml::file(path));
    for (name, value) in variables {
        let key = name
            .trim_start_matches("ENGRAM_")
            .to_lowercase()
            .replace("__", ".");
        // Values computed by a shell at start-up stand for a node id.
        let value = if value.contains("$((") {
            "2"
        } else {
            value.as_str()
        };
        // A secret the deployment supplies (compose: `${VAR:?message}`).
        let value = if value.starts_with("${") && name.contains("SECRET") {
            "deployment-supplied-secret-0123456789"
        } else {
            value
        };
        let value = if value.contains("${HOSTNAME}") {
            "engram-worker-1.engram-worker:7810"
        } else {
            value
        };
        figment = figment.merge((key, FigmentValue::from_str(value).unwrap()));
    }
    let config: EngramConfig = figment
        .extract()
        .unwrap_or_else(|e| panic!("{} with {variables:?}: {e}", path.display()));
    config
        .validate()
        .unwrap_or_else(|e| panic!("{} with {variables:?}: {e}", path.display()));
    config
}

#[test]
fn every_shipped_config_loads_through_the_real_loader() {
    let mut dirs = vec![repo_root().join("config")];
    dirs.push(deploy().join("docker/config"));
    dirs.push(deploy().join("k8s/config"));
    let mut checked = 0;
    for dir in dirs {
        for file in tomls(&dir) {
            engram_cli::config::load(&file).unwrap_or_else(|e| panic!("{}: {e:#}", file.display()));
            checked += 1;
        }
    }
    assert!(checked >= 8, "only {checked} config files found");
}

#[test]
fn compose_variables_and_config_files_match_the_schema() {
    let compose = std::fs::read_to_string(deploy().join("compose.yml")).unwrap();
    let config_dir = deploy().join("docker/config");
    // Each service: its --config file exists, and with the variables of
    // its environment it is a valid config of the right role.
    let mut services = 0;
    for block in compose.split("\n  ").filter(|b| b.contains("\"serve\"")) {
        let file = block
            .split("/etc/engram/")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap();
        let path = config_dir.join(file);
        assert!(path.exists(), "compose uses missing {}", path.display());
        let mut vars = variables(block);
        vars.extend(
            variables(&compose)
                .into_iter()
                .filter(|(n, _)| n.contains("S3") || n.contains("SECURITY")),
        );
        let config = load_with(&path, &vars);
        let role = format!("{:?}", config.cluster.role).to_lowercase();
        assert!(
            block.contains(&format!("\"--role\", \"{role}\"")),
            "{block}"
        );
        services += 1;
    }
    assert_eq!(services, 6, "3 coordinators and 3 workers");
}

#[test]
fn kubernetes_variables_and_config_files_match_the_schema() {
    let k8s = deploy().join("k8s");
    let kustomization = std::fs::read_to_string(k8s.join("kustomization.yaml")).unwrap();
    for (manifest, file) in [
        ("coordinators.yaml", "coordinator.toml"),
        ("workers.yaml", "worker.toml"),
    ] {
        let text = std::fs::read_to_string(k8s.join(manifest)).unwrap();
        assert!(
            text.contains(&format!("/etc/engram-k8s/{file}")),
            "{manifest}"
        );
        assert!(kustomization.contains(&format!("config/{file}")), "{file}");
        let config = load_with(&k8s.join("config").join(file), &variables(&text));
        assert_eq!(config.cluster.coordinators.len(), 3);
    }
    for resource in [
        "coordinators.yaml",
        "workers.yaml",
        "pdb.yaml",
        "networkpolicy.yaml",
    ] {
        assert!(kustomization.contains(resource), "{resource}");
    }
}

/// Every pod gets the cluster secret from the Secret kustomize generates
/// out of the env file `make-secrets.sh` writes (never committed); with
/// those values each node's config is valid.
#[test]
fn kubernetes_nodes_get_a_generated_cluster_secret() {
    let k8s = deploy().join("k8s");
    let kustomization = std::fs::read_to_string(k8s.join("kustomization.yaml")).unwrap();
    assert!(
        kustomization.contains("secretGenerator:")
            && kustomization.contains("name: engram-secrets")
            && kustomization.contains("secrets/engram.env"),
        "{kustomization}"
    );
    let ignored = std::fs::read_to_string(repo_root().join(".gitignore")).unwrap();
    assert!(
        ignored.lines().any(|l| l == "/deploy/k8s/secrets"),
        "secrets must never be committed"
    );
    let out = tempfile::tempdir().unwrap();
    let made = std::process::Command::new(k8s.join("make-secrets.sh"))
        .arg("--api-keys")
        .arg(out.path())
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let env_file = out.path().join("engram.env");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&env_file).unwrap().permissions().mode() & 0o077,
        0,
        "readable by others"
    );
    let secrets = variables(&std::fs::read_to_string(&env_file).unwrap());
    let names: Vec<&str> = secrets.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "ENGRAM_SECURITY__CLUSTER_SECRET",
            "ENGRAM_SECURITY__API_KEY",
            "ENGRAM_SECURITY__READ_ONLY_API_KEY"
        ]
    );
    for (manifest, file) in [
        ("coordinators.yaml", "coordinator.toml"),
        ("workers.yaml", "worker.toml"),
    ] {
        let text = std::fs::read_to_string(k8s.join(manifest)).unwrap();
        assert!(
            text.contains("- secretRef: {name: engram-secrets}"),
            "{manifest} does not mount the cluster secret"
        );
        let mut vars = variables(&text);
        vars.extend(secrets.iter().cloned());
        let config = load_with(&k8s.join("config").join(file), &vars);
        assert!(config.security.cluster_secret.is_some(), "{manifest}");
    }
}

#[test]
fn a_misspelt_variable_is_caught() {
    // The check above would catch a typo in a deployment file.
    let path = deploy().join("docker/config/worker.toml");
    let result = std::panic::catch_unwind(|| {
        load_with(
            &path,
            &[("ENGRAM_CLUSTER__NODEID".to_string(), "2".to_string())],
        )
    });
    assert!(result.is_err());
}

/// Runs scripts/check_k8s_manifests.py (kustomize renders, then every
/// reference is resolved in the rendered set) over `deploy_dir`.
fn check_manifests(deploy_dir: &Path) -> std::process::Output {
    let root = repo_root();
    let python = root.join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `make setup` (PyYAML comes with moto)",
        python.display()
    );
    std::process::Command::new(python)
        .arg(root.join("scripts/check_k8s_manifests.py"))
        .arg("--deploy")
        .arg(deploy_dir)
        .output()
        .unwrap()
}

#[test]
fn kubernetes_manifests_render_and_every_reference_resolves() {
    let out = check_manifests(&deploy());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Both kustomizations rendered, the embed Job's included.
    assert!(
        stdout.contains("k8s kustomization=k8s objects="),
        "{stdout}"
    );
    assert!(
        stdout.contains("k8s kustomization=k8s-embed objects="),
        "{stdout}"
    );
    assert!(stdout.contains("Job/engram-embed"), "{stdout}");
}

#[test]
fn a_dangling_manifest_reference_is_caught() {
    // The bug this check was written for: a Job naming the config map by a
    // name kustomize does not generate. And a --config path the map lacks.
    let work = tempfile::tempdir().unwrap();
    for dir in ["k8s", "k8s-embed"] {
        let to = work.path().join(dir);
        std::fs::create_dir_all(to.join("config")).unwrap();
        for entry in std::fs::read_dir(deploy().join(dir)).unwrap() {
            let entry = entry.unwrap();
            if entry.path().is_file() {
                std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
            }
        }
        if dir == "k8s" {
            for file in tomls(&deploy().join("k8s/config")) {
                std::fs::copy(&file, to.join("config").join(file.file_name().unwrap())).unwrap();
            }
        }
    }
    let job = work.path().join("k8s-embed/embed-job.yaml");
    let text = std::fs::read_to_string(&job).unwrap();
    let broken = text
        .replace(
            "configMap: {name: engram-config}",
            "configMap: {name: engram-conf}",
        )
        .replace(
            "/etc/engram-k8s/coordinator.toml",
            "/etc/engram-k8s/coordinatr.toml",
        );
    assert_ne!(broken, text, "the mutation must change the Job");
    std::fs::write(&job, broken).unwrap();
    let out = check_manifests(work.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.contains("ConfigMap engram-conf does not exist"),
        "{stdout}"
    );
    assert!(stdout.contains("coordinatr.toml"), "{stdout}");
}
