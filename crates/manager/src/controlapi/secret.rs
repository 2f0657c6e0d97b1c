//! Control API calls on secrets (SwarmKit manager/controlapi/secret.go): create with name and
//! size checks, label-only updates, get and list that never return the data (and never list
//! internal secrets), and removal refused while a service references the secret. Secret data is
//! never logged. External secret drivers need plugins, which swarmd does not have: creating a
//! secret with one is refused as not supported (Unimplemented).

use store::{By, StoreError};
use tonic::Status;

use super::validate::{invalid_argument, validate_config_or_secret_annotations};
use super::{ControlApi, TxError, filter_match_labels, labels_of, name_of, set_version};

/// Secret data must be shorter than this (validation.MaxSecretSize, 500 KiB).
const MAX_SECRET_SIZE: usize = 500 * 1024;

/// The secret as it may leave the manager: without its data.
fn redact(mut s: api::Secret) -> api::Secret {
    if let Some(spec) = s.spec.as_mut() {
        spec.data.clear();
    }
    s
}

fn validate_secret_spec(spec: Option<&api::SecretSpec>) -> Result<&api::SecretSpec, Status> {
    let Some(spec) = spec else {
        return Err(invalid_argument());
    };
    validate_config_or_secret_annotations(spec.annotations.as_ref())?;
    if let Some(driver) = &spec.driver {
        if driver.name.is_empty() {
            return Err(Status::invalid_argument("secret driver must have a name"));
        }
        return Ok(spec);
    }
    if spec.data.is_empty() || spec.data.len() >= MAX_SECRET_SIZE {
        return Err(Status::invalid_argument(format!(
            "secret data must be larger than 0 and less than {MAX_SECRET_SIZE} bytes"
        )));
    }
    Ok(spec)
}

/// Compares secret bytes without an early exit, so timing says nothing about the content.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub(super) async fn get(
    ctl: &ControlApi,
    req: api::GetSecretRequest,
) -> Result<api::GetSecretResponse, Status> {
    if req.secret_id.is_empty() {
        return Err(Status::invalid_argument("secret ID must be provided"));
    }
    let secret = ctl
        .store
        .view(|tx| tx.get_secret(&req.secret_id))
        .ok_or_else(|| Status::not_found(format!("secret {} not found", req.secret_id)))?;
    Ok(api::GetSecretResponse {
        secret: Some(redact(secret)),
    })
}

pub(super) async fn update(
    ctl: &ControlApi,
    req: api::UpdateSecretRequest,
) -> Result<api::UpdateSecretResponse, Status> {
    let (Some(version), false) = (req.secret_version, req.secret_id.is_empty()) else {
        return Err(invalid_argument());
    };
    let Some(spec) = req.spec else {
        return Err(invalid_argument());
    };
    let id = req.secret_id;
    ctl.write(|tx| {
        let mut secret = tx
            .get_secret(&id)
            .ok_or_else(|| Status::not_found(format!("secret {id} not found")))?;
        let current = secret.spec.get_or_insert_with(Default::default);
        if name_of(&current.annotations) != name_of(&spec.annotations)
            || (!spec.data.is_empty() && !constant_time_eq(&spec.data, &current.data))
        {
            return Err(Status::invalid_argument("only updates to Labels are allowed").into());
        }
        current
            .annotations
            .get_or_insert_with(Default::default)
            .labels = labels_of(&spec.annotations);
        set_version(&mut secret.meta, version);
        tx.update_secret(secret)?;
        Ok(())
    })
    .await?;
    tracing::debug!(secret.id = %id, "secret updated");
    let secret = ctl.store.view(|tx| tx.get_secret(&id)).map(redact);
    Ok(api::UpdateSecretResponse { secret })
}

pub(super) async fn list(
    ctl: &ControlApi,
    req: api::ListSecretsRequest,
) -> Result<api::ListSecretsResponse, Status> {
    let f = req.filters.unwrap_or_default();
    let secrets = ctl.store.view(|tx| {
        let mut any: Vec<By<'_>> = Vec::new();
        any.extend(f.names.iter().map(|n| By::Name(n)));
        any.extend(f.name_prefixes.iter().map(|n| By::NamePrefix(n)));
        any.extend(f.id_prefixes.iter().map(|n| By::IdPrefix(n)));
        tx.find_secrets(if any.is_empty() { By::All } else { By::Or(any) })
    });
    let secrets = secrets
        .into_iter()
        .filter(|s| {
            !s.internal
                && filter_match_labels(
                    &labels_of(&s.spec.as_ref().and_then(|sp| sp.annotations.clone())),
                    &f.labels,
                )
        })
        .map(redact)
        .collect();
    Ok(api::ListSecretsResponse { secrets })
}

pub(super) async fn create(
    ctl: &ControlApi,
    req: api::CreateSecretRequest,
) -> Result<api::CreateSecretResponse, Status> {
    let spec = validate_secret_spec(req.spec.as_ref())?.clone();
    if spec.driver.is_some() {
        // SwarmKit's drivers.NewSecretDriver fails so without plugins; its words stay in ours
        // for scripts that look for them.
        return Err(Status::unimplemented(
            "secret drivers are not supported yet (plugin getter is nil)",
        ));
    }
    let name = name_of(&spec.annotations).to_string();
    let id = api::naming::new_id();
    let secret = api::Secret {
        id: id.clone(),
        spec: Some(spec),
        ..Default::default()
    };
    ctl.write(|tx| match tx.create_secret(secret) {
        Err(StoreError::NameConflict { .. }) => Err(TxError::Refused(Status::already_exists(
            format!("secret {name} already exists"),
        ))),
        r => Ok(r?),
    })
    .await?;
    tracing::debug!(secret.id = %id, "secret created");
    let secret = ctl.store.view(|tx| tx.get_secret(&id)).map(redact);
    Ok(api::CreateSecretResponse { secret })
}

pub(super) async fn remove(
    ctl: &ControlApi,
    req: api::RemoveSecretRequest,
) -> Result<api::RemoveSecretResponse, Status> {
    if req.secret_id.is_empty() {
        return Err(Status::invalid_argument("secret ID must be provided"));
    }
    let id = req.secret_id;
    ctl.write(|tx| {
        let secret = tx
            .get_secret(&id)
            .ok_or_else(|| Status::not_found(format!("could not find secret {id}")))?;
        let users = tx.find_services(By::ReferencedSecret(&id));
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
                "secret '{}' is in use by the following {kind}: {}",
                name_of(&secret.spec.as_ref().and_then(|sp| sp.annotations.clone())),
                names.join(", ")
            ))
            .into());
        }
        tx.delete_secret(&id)?;
        Ok(())
    })
    .await?;
    tracing::debug!(secret.id = %id, "secret removed");
    Ok(api::RemoveSecretResponse {})
}
