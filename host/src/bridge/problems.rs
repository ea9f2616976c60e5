//! What `gatehost run` and `gatehost check` refuse a config for: the bridge's own settings
//! (`[local]`, `[store]`, `[metrics]`, `[[simulators]]`), and what devices, rules, limits and
//! permissions refer to, checked against the loaded plugins. Every problem is one sentence that
//! names the setting.

use crate::config::{Config, LocalConfig};
use crate::plugins::manifest::PluginKind;
use crate::plugins::registry::Registry;

/// What is wrong with the bridge's own settings (`[local]`, `[store]`, `[metrics]`): the
/// problems `gatehost run` refuses to start with.
pub(crate) fn bridge_problems(config: &Config) -> Vec<String> {
    let mut problems = Vec::new();
    local_problems(&config.local, &mut problems);
    if config.store.max_mib == Some(0) {
        problems.push("store.max_mib must be at least 1".to_string());
    }
    if let Some(ms) = config.store.sync_interval_ms.filter(|&ms| ms > 1000) {
        problems.push(format!(
            "store.sync_interval_ms is {ms}: at most 1000 (local publishers wait that long for their PUBACK)"
        ));
    }
    if config.metrics.listen != "off"
        && config
            .metrics
            .listen
            .parse::<std::net::SocketAddr>()
            .is_err()
    {
        problems.push(format!(
            "metrics.listen '{}' must be an address like 127.0.0.1:9464, or \"off\"",
            config.metrics.listen
        ));
    }
    for sim in &config.simulators {
        if let Err(why) = crate::mqtt::topic::validate_topic_name(&sim.topic) {
            problems.push(format!(
                "simulator '{}': topic '{}' {why}",
                sim.name, sim.topic
            ));
        }
        if sim.qos > 1 {
            problems.push(format!("simulator '{}': qos must be 0 or 1", sim.name));
        }
    }
    problems
}

/// Check what the config refers to against the loaded plugins. Returns every problem found.
pub fn config_problems(config: &Config, registry: &Registry) -> Vec<String> {
    let mut problems = Vec::new();
    problems.extend(bridge_problems(config));
    if let Some(sandbox) = &config.sandbox {
        if let Err(e) = crate::sandbox::config::SandboxConfig::load(&config.resolve(sandbox)) {
            problems.push(format!("sandbox: {e}"));
        }
    }
    device_problems(config, registry, &mut problems);
    rule_problems(config, registry, &mut problems);
    plugin_setting_problems(config, registry, &mut problems);
    problems
}

/// `[local]`: the embedded broker's listener and TLS, or an external broker's address,
/// credentials and TLS files.
fn local_problems(local: &LocalConfig, problems: &mut Vec<String>) {
    match local.external_broker() {
        Err(why) => problems.push(why.to_string()),
        Ok(None) => {
            let external_only = [
                ("client_id", local.client_id.is_some()),
                ("username", local.username.is_some()),
                ("password", local.password.is_some()),
                ("ca_file", local.ca_file.is_some()),
                ("client_cert", local.client_cert.is_some()),
                ("client_key", local.client_key.is_some()),
                ("share_group", local.share_group.is_some()),
            ];
            for (key, set) in external_only {
                if set {
                    problems.push(format!(
                        "local.{key} is for an external broker; local.broker is \"embedded\""
                    ));
                }
            }
        }
        Ok(Some(url)) => {
            if local.tls_cert.is_some() || local.tls_key.is_some() || local.client_ca.is_some() {
                problems.push(
                    "local.tls_cert, local.tls_key and local.client_ca are for the embedded \
                     broker; with an external one, its own listener does TLS"
                        .to_string(),
                );
            }
            let tls_only = [
                ("ca_file", local.ca_file.is_some()),
                ("client_cert", local.client_cert.is_some()),
                ("client_key", local.client_key.is_some()),
            ];
            for (key, set) in tls_only {
                if set && !url.tls {
                    problems.push(format!(
                        "local.{key} is set but {url} is not TLS (use mqtts://)"
                    ));
                }
            }
            if local.client_cert.is_some() != local.client_key.is_some() {
                problems.push(
                    "local.client_cert and local.client_key must be given together".to_string(),
                );
            }
            if local.password.is_some() && local.username.is_none() {
                problems.push("local.password needs a local.username".to_string());
            }
            if let Some(group) = &local.share_group {
                if group.is_empty() || group.contains(['/', '+', '#']) {
                    problems.push(format!(
                        "local.share_group '{group}' must be a non-empty name without '/', '+' or '#'"
                    ));
                }
            }
            if local.client_id.as_deref() == Some("") {
                problems.push("local.client_id must not be empty".to_string());
            }
        }
    }
    if local.listen.parse::<std::net::SocketAddr>().is_err() {
        problems.push(format!(
            "local.listen '{}' must be an address like 127.0.0.1:1883",
            local.listen
        ));
    }
    match (&local.tls_cert, &local.tls_key) {
        (Some(_), None) | (None, Some(_)) => {
            problems.push("local.tls_cert and local.tls_key must be given together".to_string())
        }
        _ => {}
    }
    if local.client_ca.is_some() && local.tls_cert.is_none() {
        problems.push(
            "local.client_ca needs local.tls_cert and local.tls_key (client certificates \
             come with TLS)"
                .to_string(),
        );
    }
    if local.max_packet_kib == Some(0) {
        problems.push("local.max_packet_kib must be at least 1".to_string());
    }
}

/// `[[devices]]` and `[[device_templates]]`: names, parameters, `from_cloud` filters, flows.
fn device_problems(config: &Config, registry: &Registry, problems: &mut Vec<String>) {
    let mut names = std::collections::BTreeSet::new();
    for device in &config.devices {
        if !names.insert(device.name.as_str()) {
            problems.push(format!("device '{}' is defined twice", device.name));
        }
        let params = device.param_pairs();
        if let Err(e) = &params {
            problems.push(e.to_string());
        }
        for filter in &device.from_cloud {
            if let Err(e) = crate::mqtt::topic::validate_topic_filter(filter) {
                problems.push(format!(
                    "device '{}': from_cloud filter '{filter}' {e}",
                    device.name
                ));
            }
        }
        match registry.get(&device.flow) {
            Ok(p) if p.info.manifest.kind != PluginKind::Flow => problems.push(format!(
                "device '{}': plugin '{}' is a {}, not a flow",
                device.name, device.flow, p.info.manifest.kind
            )),
            Ok(p) => {
                if let (Some(declared), Ok(params)) = (&p.info.manifest.params, &params) {
                    if let Err(why) = declared.apply(params) {
                        problems.push(format!("device '{}': {why}", device.name));
                    }
                }
            }
            Err(e) => problems.push(format!("device '{}': {e}", device.name)),
        }
    }
    for template in &config.device_templates {
        let name = format!("device template '{}'", template.pattern);
        match registry.get(&template.flow) {
            Ok(p) if p.info.manifest.kind != PluginKind::Flow => problems.push(format!(
                "{name}: plugin '{}' is a {}, not a flow",
                template.flow, p.info.manifest.kind
            )),
            Ok(_) => {}
            Err(e) => problems.push(format!("{name}: {e}")),
        }
        if let Err(e) = template.instantiate("x").and_then(|d| d.param_pairs()) {
            problems.push(format!("{name}: {e}"));
        }
    }
}

/// `[[rules]]`: names, filters, and the plugin or template each runs.
fn rule_problems(config: &Config, registry: &Registry, problems: &mut Vec<String>) {
    let mut names = std::collections::BTreeSet::new();
    for rule in &config.rules {
        if !names.insert(rule.name.as_str()) {
            problems.push(format!("rule '{}' is defined twice", rule.name));
        }
        if rule.filters().is_empty()
            && rule.from_cloud.is_empty()
            && !matches!(rule.template_rule(), Some(Err(_)))
        {
            problems.push(format!(
                "rule '{}': `from` lists no topic filter",
                rule.name
            ));
        }
        for filter in &rule.from {
            if let Err(e) = crate::mqtt::topic::validate_topic_filter(filter) {
                problems.push(format!("rule '{}': from filter '{filter}' {e}", rule.name));
            }
        }
        for filter in &rule.from_cloud {
            if let Err(e) = crate::mqtt::topic::validate_topic_filter(filter) {
                problems.push(format!(
                    "rule '{}': from_cloud filter '{filter}' {e}",
                    rule.name
                ));
            }
        }
        match (&rule.rule, rule.template_rule()) {
            (Some(_), Some(_)) => problems.push(format!(
                "rule '{}' has both `rule` and [rules.template]; keep one",
                rule.name
            )),
            (None, None) => problems.push(format!(
                "rule '{}' needs `rule = \"<plugin>\"` or a [rules.template]",
                rule.name
            )),
            (None, Some(Err(e))) => problems.push(e.to_string()),
            (None, Some(Ok(_))) => {}
            (Some(plugin), None) => match registry.get(plugin) {
                Ok(p) if p.info.manifest.kind != PluginKind::Rule => problems.push(format!(
                    "rule '{}': plugin '{}' is a {}, not a rule",
                    rule.name, plugin, p.info.manifest.kind
                )),
                Ok(_) => {}
                Err(e) => problems.push(format!("rule '{}': {e}", rule.name)),
            },
        }
    }
}

/// `[limits.plugins.<name>]` and `[permissions.<name>]`: the plugins they name, the patterns.
fn plugin_setting_problems(config: &Config, registry: &Registry, problems: &mut Vec<String>) {
    for name in config.limits.plugins.keys() {
        if let Err(e) = registry.get(name) {
            problems.push(format!("[limits.plugins.{name}]: {e}"));
        }
    }
    for (name, narrowing) in &config.permissions {
        if let Err(e) = registry.get(name) {
            problems.push(format!("[permissions.{name}]: {e}"));
        }
        for pattern in narrowing.endpoints.iter().flatten() {
            if !pattern.contains(':') {
                problems.push(format!(
                    "[permissions.{name}]: endpoint '{pattern}' must be host:port (port may be *)"
                ));
            }
        }
        for pattern in narrowing.add_endpoints.iter().flatten() {
            if let Err(e) = crate::plugins::manifest::check_endpoint_pattern(pattern) {
                let why = e.trim_start_matches("permissions.endpoints: ");
                problems.push(format!("[permissions.{name}] add_endpoints: {why}"));
            }
        }
    }
}
