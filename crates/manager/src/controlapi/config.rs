//! Control API calls on configs (SwarmKit manager/controlapi/config.go): create with name and
//! size checks, label-only updates, get and list (configs are not secret: data is returned), and
//! removal refused while a service references the config.

use store::{By, StoreError};
use tonic::Status;

use super::validate::{invalid_argument, validate_config_or_secret_annotations};
use super::{ControlApi, TxError, filter_match_labels, labels_of, name_of, set_version};

/// Config data must be shorter than this (controlapi.MaxConfigSize, 1000 KiB).
const MAX_CONFIG_SIZE: usize = 1000 * 1024;

fn validate_config_spec(spec: Option<&api::ConfigSpec>) -> Result<&api::ConfigSpec, Status> {
    let Some(spec) = spec else {
        return Err(invalid_argument());
    };
    validate_config_or_secret_annotations(spec.annotations.as_ref())?;
    if spec.data.is_empty() || spec.data.len() >= MAX_CONFIG_SIZE {
        return Err(Status::invalid_argument(format!(
            "config data must be larger than 0 and less than {MAX_CONFIG_SIZE} bytes"
        )));
    }
    Ok(spec)
}

pub(super) async fn get(
    ctl: &ControlApi,
    req: api::GetConfigRequest,
) -> Result<api::GetConfigResponse, Status> {
    if req.config_id.is_empty() {
        return Err(Status::invalid_argument("config ID must be provided"));
    }
    let config = ctl
        .store
        .view(|tx| tx.get_config(&req.config_id))
        .ok_or_else(|| Status::not_found(format!("config {} not found", req.config_id)))?;
    Ok(api::GetConfigResponse {
        config: Some(config),
    })
}

pub(super) async fn update(
    ctl: &ControlApi,
    req: api::UpdateConfigRequest,
) -> Result<api::UpdateConfigResponse, Status> {
    let (Some(version), false) = (req.config_version, req.config_id.is_empty()) else {
        return Err(invalid_argument());
    };
    let Some(spec) = req.spec else {
        return Err(invalid_argument());
    };
    let id = req.config_id;
    ctl.write(|tx| {
        let mut config = tx
            .get_config(&id)
            .ok_or_else(|| Status::not_found(format!("config {id} not found")))?;
        let current = config.spec.get_or_insert_with(Default::default);
        if name_of(&current.annotations) != name_of(&spec.annotations)
            || (!spec.data.is_empty() && spec.data != current.data)
        {
            return Err(Status::invalid_argument("only updates to Labels are allowed").into());
        }
        current
            .annotations
            .get_or_insert_with(Default::default)
            .labels = labels_of(&spec.annotations);
        set_version(&mut config.meta, version);
        tx.update_config(config)?;
        Ok(())
    })
    .await?;
    tracing::debug!(config.id = %id, "config updated");
    let config = ctl.store.view(|tx| tx.get_config(&id));
    Ok(api::UpdateConfigResponse { config })
}

pub(super) async fn list(
    ctl: &ControlApi,
    req: api::ListConfigsRequest,
) -> Result<api::ListConfigsResponse, Status> {
    let f = req.filters.unwrap_or_default();
    let configs = ctl.store.view(|tx| {
        let mut any: Vec<By<'_>> = Vec::new();
        any.extend(f.names.iter().map(|n| By::Name(n)));
        any.extend(f.name_prefixes.iter().map(|n| By::NamePrefix(n)));
        any.extend(f.id_prefixes.iter().map(|n| By::IdPrefix(n)));
        tx.find_configs(if any.is_empty() { By::All } else { By::Or(any) })
    });
    let configs = configs
        .into_iter()
        .filter(|s| {
            filter_match_labels(
                &labels_of(&s.spec.as_ref().and_then(|sp| sp.annotations.clone())),
                &f.labels,
            )
        })
        .collect();
    Ok(api::ListConfigsResponse { configs })
}

pub(super) async fn create(
    ctl: &ControlApi,
    req: api::CreateConfigRequest,
) -> Result<api::CreateConfigResponse, Status> {
    let spec = validate_config_spec(req.spec.as_ref())?.clone();
    let name = name_of(&spec.annotations).to_string();
    let id = api::naming::new_id();
    let config = api::Config {
        id: id.clone(),
        spec: Some(spec),
        ..Default::default()
    };
    ctl.write(|tx| match tx.create_config(config) {
        Err(StoreError::NameConflict { .. }) => Err(TxError::Refused(Status::already_exists(
            format!("config {name} already exists"),
        ))),
        r => Ok(r?),
    })
    .await?;
    tracing::debug!(config.id = %id, "config created");
    let config = ctl.store.view(|tx| tx.get_config(&id));
    Ok(api::CreateConfigResponse { config })
}

pub(super) async fn remove(
    ctl: &ControlApi,
    req: api::RemoveConfigRequest,
) -> Result<api::RemoveConfigResponse, Status> {
    if req.config_id.is_empty() {
        return Err(Status::invalid_argument("config ID must be provided"));
    }
    let id = req.config_id;
    ctl.write(|tx| {
        let config = tx
            .get_config(&id)
            .ok_or_else(|| Status::not_found(format!("could not find config {id}")))?;
        let users = tx.find_services(By::ReferencedConfig(&id));
        if !users.is_empty() {
            let names: Vec<String> = users
                .iter()
                .map(|s| {
                    name_of(&s.spec.as_ref().and_then(|sp| sp.annotations.clone())).to_string()
                })
                .collect();
            let kind = if names.len() == 1 {
                "service"
            } else {
                "services"
            };
            return Err(Status::invalid_argument(format!(
                "config '{}' is in use by the following {kind}: {}",
                name_of(&config.spec.as_ref().and_then(|sp| sp.annotations.clone())),
                names.join(", ")
            ))
            .into());
        }
        tx.delete_config(&id)?;
        Ok(())
    })
    .await?;
    tracing::debug!(config.id = %id, "config removed");
    Ok(api::RemoveConfigResponse {})
}
