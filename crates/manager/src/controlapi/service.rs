//! Control API calls on services (SwarmKit manager/controlapi/service.go): create and update with
//! full spec validation and the checks that need the store (ingress attachment, published-port
//! conflicts, referenced secrets and configs, ingress presence), manual rollback, removal (tasks
//! get desired state REMOVE), get with defaults filled in, list with filters and task counts.
//! Tasks themselves are created by the orchestrators; endpoints are allocated by the allocator.

use std::collections::HashSet;

use api::TaskState;
use api::port_config::PublishMode;
use api::service_spec::Mode;
use store::{By, StoreError, Tx};
use tonic::Status;

use super::network::is_ingress_network;
use super::task::runtime_name;
use super::validate::{invalid_argument, is_job_spec, validate_service_spec};
use super::{
    ControlApi, TxError, any_of, filter_contains, filter_contains_prefix, filter_match_labels,
    labels_of, name_of, now, set_version, version_of,
};

fn not_found(id: &str) -> Status {
    Status::not_found(format!("service {id} not found"))
}

fn container(spec: &api::ServiceSpec) -> Option<&api::ContainerSpec> {
    match spec.task.as_ref()?.runtime.as_ref()? {
        api::task_spec::Runtime::Container(c) => Some(c),
        _ => None,
    }
}

/// Whether the service publishes a port in ingress mode, so it needs the routing mesh.
pub(super) fn ingress_network_needed(spec: Option<&api::ServiceSpec>) -> bool {
    spec.and_then(|s| s.endpoint.as_ref()).is_some_and(|e| {
        e.ports
            .iter()
            .any(|p| p.publish_mode == PublishMode::Ingress as i32)
    })
}

/// Refuses an explicit attachment to the ingress network (service.go validateNetworks); unknown
/// networks are let through.
fn check_networks(tx: &Tx<'_>, spec: &api::ServiceSpec) -> Result<(), Status> {
    let networks = spec
        .task
        .as_ref()
        .map(|t| t.networks.as_slice())
        .unwrap_or(&[]);
    for na in networks {
        if let Some(n) = tx.get_network(&na.target)
            && is_ingress_network(&n)
        {
            return Err(Status::invalid_argument(format!(
                "Service cannot be explicitly attached to the ingress network {}",
                api::gofmt::quote(name_of(
                    &n.spec.as_ref().and_then(|s| s.annotations.clone())
                ))
            )));
        }
    }
    Ok(())
}

/// Best-effort published-port conflict check against other services (service.go
/// checkPortConflicts). `service_id` is skipped (the service being updated).
fn check_port_conflicts(
    tx: &Tx<'_>,
    spec: &api::ServiceSpec,
    service_id: &str,
) -> Result<(), Status> {
    let Some(endpoint) = &spec.endpoint else {
        return Ok(());
    };
    let mut ingress = HashSet::new();
    let mut host = HashSet::new();
    for p in endpoint.ports.iter().filter(|p| p.published_port != 0) {
        if p.publish_mode == PublishMode::Ingress as i32 {
            ingress.insert((p.protocol, p.published_port));
        } else if p.publish_mode == PublishMode::Host as i32 {
            host.insert((p.protocol, p.published_port));
        }
    }
    if ingress.is_empty() && host.is_empty() {
        return Ok(());
    }
    let in_use = |p: &api::PortConfig, s: &api::Service| -> Result<(), Status> {
        if p.published_port == 0 {
            return Ok(());
        }
        let key = (p.protocol, p.published_port);
        let name = name_of(&s.spec.as_ref().and_then(|sp| sp.annotations.clone())).to_string();
        if p.publish_mode == PublishMode::Host as i32 && ingress.contains(&key) {
            return Err(Status::invalid_argument(format!(
                "port '{}' is already in use by service '{name}' ({}) as a host-published port",
                p.published_port, s.id
            )));
        }
        if p.publish_mode == PublishMode::Ingress as i32
            && (ingress.contains(&key) || host.contains(&key))
        {
            return Err(Status::invalid_argument(format!(
                "port '{}' is already in use by service '{name}' ({}) as an ingress port",
                p.published_port, s.id
            )));
        }
        Ok(())
    };
    for s in tx.find_services(By::All) {
        if !service_id.is_empty() && s.id == service_id {
            continue;
        }
        let spec_ports = s
            .spec
            .as_ref()
            .and_then(|sp| sp.endpoint.as_ref())
            .map(|e| e.ports.clone());
        for p in spec_ports.unwrap_or_default() {
            in_use(&p, &s)?;
        }
        let allocated = s
            .endpoint
            .as_ref()
            .map(|e| e.ports.clone())
            .unwrap_or_default();
        for p in &allocated {
            in_use(p, &s)?;
        }
    }
    Ok(())
}

fn not_found_list(kind: &str, names: &[String]) -> Status {
    let kind = if names.len() == 1 {
        kind.to_string()
    } else {
        format!("{kind}s")
    };
    Status::invalid_argument(format!("{kind} not found: {}", names.join(", ")))
}

/// Every referenced secret must exist under the referenced name.
fn check_secret_existence(tx: &Tx<'_>, spec: &api::ServiceSpec) -> Result<(), Status> {
    let Some(c) = container(spec) else {
        return Ok(());
    };
    let failed: Vec<String> = c
        .secrets
        .iter()
        .filter(|r| {
            tx.get_secret(&r.secret_id)
                .is_none_or(|s| name_of(&s.spec.and_then(|sp| sp.annotations)) != r.secret_name)
        })
        .map(|r| r.secret_name.clone())
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(not_found_list("secret", &failed))
    }
}

/// Every referenced config must exist under the referenced name.
fn check_config_existence(tx: &Tx<'_>, spec: &api::ServiceSpec) -> Result<(), Status> {
    let Some(c) = container(spec) else {
        return Ok(());
    };
    let failed: Vec<String> = c
        .configs
        .iter()
        .filter(|r| {
            tx.get_config(&r.config_id)
                .is_none_or(|s| name_of(&s.spec.and_then(|sp| sp.annotations)) != r.config_name)
        })
        .map(|r| r.config_name.clone())
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(not_found_list("config", &failed))
    }
}

fn check_ingress_present(tx: &Tx<'_>, spec: Option<&api::ServiceSpec>) -> Result<(), Status> {
    if ingress_network_needed(spec) && !tx.find_networks(By::All).iter().any(is_ingress_network) {
        return Err(Status::failed_precondition(
            "service needs ingress network, but no ingress network is present",
        ));
    }
    Ok(())
}

pub(super) async fn create(
    ctl: &ControlApi,
    req: api::CreateServiceRequest,
) -> Result<api::CreateServiceResponse, Status> {
    let spec = validate_service_spec(req.spec.as_ref())?.clone();
    let name = name_of(&spec.annotations).to_string();
    let id = api::naming::new_id();
    let service = api::Service {
        id: id.clone(),
        spec: Some(spec.clone()),
        spec_version: Some(api::Version::default()),
        job_status: is_job_spec(&spec).then(|| api::JobStatus {
            job_iteration: Some(api::Version::default()),
            last_execution: Some(now()),
        }),
        ..Default::default()
    };
    ctl.write(|tx| {
        check_networks(tx, &spec)?;
        check_port_conflicts(tx, &spec, "")?;
        check_ingress_present(tx, Some(&spec))?;
        check_secret_existence(tx, &spec)?;
        check_config_existence(tx, &spec)?;
        match tx.create_service(service) {
            Err(e @ StoreError::NameConflict { .. }) => Err(TxError::Refused(
                Status::already_exists(format!("{e}: service {name} already exists")),
            )),
            r => Ok(r?),
        }
    })
    .await?;
    tracing::info!(service.id = %id, service.name = %name, "service created");
    let service = ctl.store.view(|tx| tx.get_service(&id));
    Ok(api::CreateServiceResponse { service })
}

/// Fills unset fields with SwarmKit's defaults (api/defaults InterpolateService).
fn insert_defaults(spec: &mut api::ServiceSpec) {
    let secs = |seconds| Some(prost_types::Duration { seconds, nanos: 0 });
    let task = spec.task.get_or_insert_with(Default::default);
    if let Some(api::task_spec::Runtime::Container(c)) = &mut task.runtime {
        if c.stop_grace_period.is_none() {
            c.stop_grace_period = secs(10);
        }
        c.pull_options.get_or_insert_with(Default::default);
        c.dns_config.get_or_insert_with(Default::default);
    }
    task.resources.get_or_insert_with(Default::default);
    match &mut task.restart {
        None => {
            task.restart = Some(Box::new(api::RestartPolicy {
                condition: api::restart_policy::RestartCondition::Any as i32,
                delay: secs(5),
                ..Default::default()
            }));
        }
        Some(r) if r.delay.is_none() => r.delay = secs(5),
        Some(_) => {}
    }
    task.placement.get_or_insert_with(Default::default);
    for uc in [&mut spec.update, &mut spec.rollback] {
        match uc {
            None => {
                *uc = Some(api::UpdateConfig {
                    parallelism: 1,
                    failure_action: api::update_config::FailureAction::Pause as i32,
                    monitor: secs(5),
                    order: api::update_config::UpdateOrder::StopFirst as i32,
                    ..Default::default()
                });
            }
            Some(c) if c.monitor.is_none() => c.monitor = secs(5),
            Some(_) => {}
        }
    }
}

pub(super) async fn get(
    ctl: &ControlApi,
    req: api::GetServiceRequest,
) -> Result<api::GetServiceResponse, Status> {
    if req.service_id.is_empty() {
        return Err(invalid_argument());
    }
    let mut service = ctl
        .store
        .view(|tx| tx.get_service(&req.service_id))
        .ok_or_else(|| not_found(&req.service_id))?;
    if req.insert_defaults {
        insert_defaults(service.spec.get_or_insert_with(Default::default));
    }
    Ok(api::GetServiceResponse {
        service: Some(service),
    })
}

pub(super) async fn update(
    ctl: &ControlApi,
    req: api::UpdateServiceRequest,
) -> Result<api::UpdateServiceResponse, Status> {
    let (Some(version), false) = (req.service_version, req.service_id.is_empty()) else {
        return Err(invalid_argument());
    };
    let spec = validate_service_spec(req.spec.as_ref())?.clone();
    let id = req.service_id;
    let rollback = req.rollback == api::update_service_request::Rollback::Previous as i32;
    ctl.write(|tx| {
        check_networks(tx, &spec)?;
        let mut service = tx.get_service(&id).ok_or_else(|| not_found(&id))?;
        let current = service.spec.clone().unwrap_or_default();
        if spec.endpoint.is_some() && spec.endpoint != current.endpoint {
            check_port_conflicts(tx, &spec, &id)?;
        }
        // Changing the deprecated service-level networks alone is refused; migrating them to the
        // task spec (changing both) is fine.
        let task_networks = |s: &api::ServiceSpec| s.task.as_ref().map(|t| t.networks.clone());
        if (!spec.networks.is_empty() || !current.networks.is_empty())
            && spec.networks != current.networks
            && task_networks(&spec) == task_networks(&current)
        {
            return Err(Status::unimplemented(
                "networks must be migrated to TaskSpec before being changed",
            )
            .into());
        }
        check_secret_existence(tx, &spec)?;
        check_config_existence(tx, &spec)?;
        if current.mode.as_ref().map(std::mem::discriminant)
            != spec.mode.as_ref().map(std::mem::discriminant)
        {
            return Err(Status::unimplemented("service mode change is not allowed").into());
        }
        if name_of(&current.annotations) != name_of(&spec.annotations) {
            return Err(Status::unimplemented("renaming services is not supported").into());
        }

        set_version(&mut service.meta, version);
        if let Some(job) = &mut service.job_status {
            job.job_iteration.get_or_insert_with(Default::default).index += 1;
            job.last_execution = Some(now());
        }
        if rollback {
            let Some(previous) = service.previous_spec.take() else {
                return Err(Status::failed_precondition(format!(
                    "service {id} does not have a previous spec"
                ))
                .into());
            };
            let previous_version = service.previous_spec_version.take();
            service.previous_spec = service.spec.replace(previous);
            service.previous_spec_version =
                std::mem::replace(&mut service.spec_version, previous_version);
            service.update_status = Some(api::UpdateStatus {
                state: api::update_status::UpdateState::RollbackStarted as i32,
                message: "manually requested rollback".to_string(),
                started_at: Some(now()),
                ..Default::default()
            });
        } else {
            service.previous_spec = service.spec.replace(spec.clone());
            service.previous_spec_version = service.spec_version.take();
            // The spec version is the version the client read; it is not comparable with the
            // service's own meta.version after this write.
            service.spec_version = version_of(&service.meta);
            service.update_status = None;
        }
        check_ingress_present(tx, service.spec.as_ref())?;
        tx.update_service(service)?;
        Ok(())
    })
    .await?;
    tracing::info!(service.id = %id, rollback, "service updated");
    let service = ctl.store.view(|tx| tx.get_service(&id));
    Ok(api::UpdateServiceResponse { service })
}

pub(super) async fn remove(
    ctl: &ControlApi,
    req: api::RemoveServiceRequest,
) -> Result<api::RemoveServiceResponse, Status> {
    if req.service_id.is_empty() {
        return Err(invalid_argument());
    }
    let id = req.service_id;
    ctl.write(|tx| {
        if tx.get_service(&id).is_none() {
            return Err(not_found(&id).into());
        }
        // Only the service, as SwarmKit: its orchestrator gives the tasks desired REMOVE in
        // batches (one transaction could not hold many or large tasks) and the task reaper
        // deletes them once they are down.
        tx.delete_service(&id)?;
        Ok(())
    })
    .await?;
    tracing::info!(service.id = %id, "service removed");
    Ok(api::RemoveServiceResponse {})
}

pub(super) async fn list(
    ctl: &ControlApi,
    req: api::ListServicesRequest,
) -> Result<api::ListServicesResponse, Status> {
    let f = req.filters.unwrap_or_default();
    let services = ctl.store.view(|tx| {
        let by = if !f.names.is_empty() {
            any_of(&f.names, By::Name)
        } else if !f.name_prefixes.is_empty() {
            any_of(&f.name_prefixes, By::NamePrefix)
        } else if !f.id_prefixes.is_empty() {
            any_of(&f.id_prefixes, By::IdPrefix)
        } else {
            By::All
        };
        tx.find_services(by)
    });
    let services = services
        .into_iter()
        .filter(|s| {
            let annotations = s.spec.as_ref().and_then(|sp| sp.annotations.clone());
            let name = name_of(&annotations);
            filter_contains(name, &f.names)
                && filter_contains_prefix(name, &f.name_prefixes)
                && filter_contains_prefix(&s.id, &f.id_prefixes)
                && filter_match_labels(&labels_of(&annotations), &f.labels)
                && (f.runtimes.is_empty()
                    || runtime_name(s.spec.as_ref().and_then(|sp| sp.task.as_ref()))
                        .is_some_and(|r| filter_contains(&r, &f.runtimes)))
        })
        .collect();
    Ok(api::ListServicesResponse { services })
}

pub(super) async fn list_statuses(
    ctl: &ControlApi,
    req: api::ListServiceStatusesRequest,
) -> Result<api::ListServiceStatusesResponse, Status> {
    let statuses = ctl.store.view(|tx| {
        req.services
            .iter()
            .map(|id| {
                let mut status = api::list_service_statuses_response::ServiceStatus {
                    service_id: id.clone(),
                    ..Default::default()
                };
                let mut global = false;
                let mut job_iteration = None;
                if let Some(service) = tx.get_service(id) {
                    match service.spec.as_ref().and_then(|s| s.mode.as_ref()) {
                        Some(Mode::Replicated(r)) => status.desired_tasks = r.replicas,
                        Some(Mode::ReplicatedJob(j)) => status.desired_tasks = j.max_concurrent,
                        _ => global = true,
                    }
                    job_iteration = service
                        .job_status
                        .map(|j| j.job_iteration.unwrap_or_default().index);
                }
                for task in tx.find_tasks(By::ServiceId(id)) {
                    let state = task.status.as_ref().map_or(0, |s| s.state);
                    if let Some(iteration) = job_iteration {
                        if task.job_iteration.is_none_or(|v| v.index != iteration) {
                            continue;
                        }
                        if state == TaskState::Complete as i32 {
                            status.completed_tasks += 1;
                        }
                    }
                    if state == TaskState::Running as i32 {
                        status.running_tasks += 1;
                    }
                    if global && task.desired_state == TaskState::Running as i32 {
                        status.desired_tasks += 1;
                    }
                    if global
                        && state != TaskState::Complete as i32
                        && task.desired_state == TaskState::Complete as i32
                    {
                        status.desired_tasks += 1;
                    }
                }
                status
            })
            .collect()
    });
    Ok(api::ListServiceStatusesResponse { statuses })
}
