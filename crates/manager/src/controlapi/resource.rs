//! Control API calls on extensions and generic resources (SwarmKit manager/controlapi/extension.go
//! and resource.go): plain CRUD. A resource's kind must name a registered extension; an extension
//! cannot be removed while resources of its kind exist.

use store::{By, StoreError};
use tonic::Status;

use super::{ControlApi, TxError, filter_match_labels, labels_of, name_of, set_version};

pub(super) async fn create_extension(
    ctl: &ControlApi,
    req: api::CreateExtensionRequest,
) -> Result<api::CreateExtensionResponse, Status> {
    let name = name_of(&req.annotations).to_string();
    if name.is_empty() {
        return Err(Status::invalid_argument("extension name must be provided"));
    }
    let id = api::naming::new_id();
    let extension = api::Extension {
        id: id.clone(),
        annotations: req.annotations,
        description: req.description,
        ..Default::default()
    };
    ctl.write(|tx| match tx.create_extension(extension) {
        Ok(()) => Ok(()),
        Err(StoreError::NameConflict { .. }) => Err(TxError::Refused(Status::already_exists(
            format!("extension {name} already exists"),
        ))),
        Err(e) => Err(TxError::Refused(Status::internal(format!(
            "could not create extension: {e}"
        )))),
    })
    .await?;
    let extension = ctl.store.view(|tx| tx.get_extension(&id));
    Ok(api::CreateExtensionResponse { extension })
}

pub(super) async fn get_extension(
    ctl: &ControlApi,
    req: api::GetExtensionRequest,
) -> Result<api::GetExtensionResponse, Status> {
    if req.extension_id.is_empty() {
        return Err(Status::invalid_argument("extension ID must be provided"));
    }
    let extension = ctl
        .store
        .view(|tx| tx.get_extension(&req.extension_id))
        .ok_or_else(|| Status::not_found(format!("extension {} not found", req.extension_id)))?;
    Ok(api::GetExtensionResponse {
        extension: Some(extension),
    })
}

pub(super) async fn remove_extension(
    ctl: &ControlApi,
    req: api::RemoveExtensionRequest,
) -> Result<api::RemoveExtensionResponse, Status> {
    if req.extension_id.is_empty() {
        return Err(Status::invalid_argument("extension ID must be provided"));
    }
    let id = req.extension_id;
    ctl.write(|tx| {
        let extension = tx
            .get_extension(&id)
            .ok_or_else(|| Status::not_found(format!("could not find extension {id}")))?;
        // SwarmKit looks resources up by kind == the extension's ID (extension.go).
        let users: Vec<String> = tx
            .find_resources(By::All)
            .into_iter()
            .filter(|r| r.kind == id)
            .take(10)
            .map(|r| name_of(&r.annotations).to_string())
            .collect();
        if !users.is_empty() {
            let kind = if users.len() == 1 {
                "resource"
            } else {
                "resources"
            };
            return Err(Status::invalid_argument(format!(
                "extension '{}' is in use by the following {kind}: {}",
                name_of(&extension.annotations),
                users.join(", ")
            ))
            .into());
        }
        tx.delete_extension(&id)?;
        Ok(())
    })
    .await?;
    Ok(api::RemoveExtensionResponse {})
}

pub(super) async fn create(
    ctl: &ControlApi,
    req: api::CreateResourceRequest,
) -> Result<api::CreateResourceResponse, Status> {
    let name = name_of(&req.annotations).to_string();
    if name.is_empty() {
        return Err(Status::invalid_argument("Resource must have a name"));
    }
    if req.kind.is_empty() {
        return Err(Status::invalid_argument(
            "Resource must belong to an Extension",
        ));
    }
    let id = api::naming::new_id();
    let kind = req.kind.clone();
    let resource = api::Resource {
        id: id.clone(),
        annotations: req.annotations,
        kind: req.kind,
        payload: req.payload,
        ..Default::default()
    };
    ctl.write(|tx| {
        if tx.find_extensions(By::Name(&kind)).is_empty() {
            return Err(Status::invalid_argument(format!("Kind {kind} is not registered")).into());
        }
        match tx.create_resource(resource) {
            Err(StoreError::NameConflict { .. }) => Err(TxError::Refused(Status::already_exists(
                format!("A resource with name {name} already exists"),
            ))),
            r => Ok(r?),
        }
    })
    .await?;
    let resource = ctl.store.view(|tx| tx.get_resource(&id));
    Ok(api::CreateResourceResponse { resource })
}

pub(super) async fn get(
    ctl: &ControlApi,
    req: api::GetResourceRequest,
) -> Result<api::GetResourceResponse, Status> {
    if req.resource_id.is_empty() {
        return Err(Status::invalid_argument("resource ID must be present"));
    }
    let resource = ctl
        .store
        .view(|tx| tx.get_resource(&req.resource_id))
        .ok_or_else(|| Status::not_found(format!("resource {} not found", req.resource_id)))?;
    Ok(api::GetResourceResponse {
        resource: Some(resource),
    })
}

pub(super) async fn remove(
    ctl: &ControlApi,
    req: api::RemoveResourceRequest,
) -> Result<api::RemoveResourceResponse, Status> {
    if req.resource_id.is_empty() {
        return Err(Status::invalid_argument("resource ID must be present"));
    }
    let id = req.resource_id;
    ctl.write(|tx| {
        if tx.get_resource(&id).is_none() {
            return Err(Status::not_found(format!("resource {id} not found")).into());
        }
        tx.delete_resource(&id)?;
        Ok(())
    })
    .await?;
    Ok(api::RemoveResourceResponse {})
}

pub(super) async fn list(
    ctl: &ControlApi,
    req: api::ListResourcesRequest,
) -> Result<api::ListResourcesResponse, Status> {
    let f = req.filters.unwrap_or_default();
    let resources = ctl.store.view(|tx| {
        let mut any: Vec<By<'_>> = Vec::new();
        any.extend(f.names.iter().map(|n| By::Name(n)));
        any.extend(f.name_prefixes.iter().map(|n| By::NamePrefix(n)));
        any.extend(f.id_prefixes.iter().map(|n| By::IdPrefix(n)));
        tx.find_resources(if any.is_empty() { By::All } else { By::Or(any) })
    });
    let resources = resources
        .into_iter()
        .filter(|r| {
            filter_match_labels(&labels_of(&r.annotations), &f.labels)
                && (f.kind.is_empty() || r.kind == f.kind)
        })
        .collect();
    Ok(api::ListResourcesResponse { resources })
}

pub(super) async fn update(
    ctl: &ControlApi,
    req: api::UpdateResourceRequest,
) -> Result<api::UpdateResourceResponse, Status> {
    let (Some(version), false) = (req.resource_version, req.resource_id.is_empty()) else {
        return Err(Status::invalid_argument("must include ID and version"));
    };
    let id = req.resource_id;
    ctl.write(|tx| {
        let mut r = tx
            .get_resource(&id)
            .ok_or_else(|| Status::not_found(format!("resource {id} not found")))?;
        if let Some(annotations) = req.annotations {
            if name_of(&r.annotations) != annotations.name {
                return Err(Status::invalid_argument("cannot change resource name").into());
            }
            r.annotations = Some(annotations);
        }
        set_version(&mut r.meta, version);
        if req.payload.is_some() {
            r.payload = req.payload;
        }
        match tx.update_resource(r) {
            Err(StoreError::SequenceConflict { .. }) => Err(TxError::Refused(
                Status::invalid_argument("update out of sequence"),
            )),
            res => Ok(res?),
        }
    })
    .await?;
    let resource = ctl.store.view(|tx| tx.get_resource(&id));
    Ok(api::UpdateResourceResponse { resource })
}
