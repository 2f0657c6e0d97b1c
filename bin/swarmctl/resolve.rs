//! ID to name resolution for display (spec 1.1 "Name resolution"): node, service and network
//! names, looked up once per invocation and cached on the [`Ctx`]; `-n` turns it off. Any lookup
//! error prints the raw ID. `node ls` does not use this (it has the names already).

use crate::common::Ctx;

impl Ctx {
    /// The node's spec name, else its hostname (when it has a description), else its ID.
    pub async fn node_name(&mut self, id: &str) -> String {
        if self.no_resolve {
            return id.to_string();
        }
        if let Some(name) = self.node_names.get(id) {
            return name.clone();
        }
        let req = api::GetNodeRequest {
            node_id: id.to_string(),
        };
        let name = match self.client.get_node(req).await {
            Ok(r) => match r.into_inner().node {
                Some(node) => node_display_name(&node, id),
                None => id.to_string(),
            },
            Err(_) => id.to_string(),
        };
        self.node_names.insert(id.to_string(), name.clone());
        name
    }

    /// The service's spec name, else its ID.
    pub async fn service_name(&mut self, id: &str) -> String {
        if self.no_resolve {
            return id.to_string();
        }
        if let Some(name) = self.service_names.get(id) {
            return name.clone();
        }
        let req = api::GetServiceRequest {
            service_id: id.to_string(),
            ..Default::default()
        };
        let name = match self.client.get_service(req).await {
            Ok(r) => match r.into_inner().service {
                Some(s) => crate::common::annotations_name(
                    s.spec.as_ref().and_then(|sp| sp.annotations.as_ref()),
                )
                .to_string(),
                None => id.to_string(),
            },
            Err(_) => id.to_string(),
        };
        self.service_names.insert(id.to_string(), name.clone());
        name
    }

    /// The network's spec name, else its ID (ours: SwarmKit's swarmctl resolves no networks).
    pub async fn network_name(&mut self, id: &str) -> String {
        if self.no_resolve {
            return id.to_string();
        }
        if let Some(name) = self.network_names.get(id) {
            return name.clone();
        }
        let req = api::GetNetworkRequest {
            network_id: id.to_string(),
            ..Default::default()
        };
        let name = match self.client.get_network(req).await {
            Ok(r) => r
                .into_inner()
                .network
                .map(|n| network_name(&n).to_string())
                .unwrap_or_else(|| id.to_string()),
            Err(_) => id.to_string(),
        };
        self.network_names.insert(id.to_string(), name.clone());
        name
    }
}

/// A network's spec name, else its ID.
pub fn network_name(n: &api::Network) -> &str {
    let name =
        crate::common::annotations_name(n.spec.as_ref().and_then(|s| s.annotations.as_ref()));
    if name.is_empty() { &n.id } else { name }
}

/// How the resolver names a node (as SwarmKit's: a description without hostname gives "").
pub fn node_display_name(node: &api::Node, id: &str) -> String {
    let spec_name =
        crate::common::annotations_name(node.spec.as_ref().and_then(|s| s.annotations.as_ref()));
    if !spec_name.is_empty() {
        return spec_name.to_string();
    }
    match &node.description {
        Some(d) => d.hostname.clone(),
        None => id.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_display_name_prefers_spec_name_then_hostname_then_id() {
        let mut node = api::Node::default();
        assert_eq!(node_display_name(&node, "N1"), "N1");
        node.description = Some(api::NodeDescription {
            hostname: "host-1".into(),
            ..Default::default()
        });
        assert_eq!(node_display_name(&node, "N1"), "host-1");
        node.spec = Some(api::NodeSpec {
            annotations: Some(api::Annotations {
                name: "named".into(),
                ..Default::default()
            }),
            ..Default::default()
        });
        assert_eq!(node_display_name(&node, "N1"), "named");
    }
}
