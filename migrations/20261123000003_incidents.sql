-- The breach register: incidents, the tenants each affects (with their subject estimate, their
-- notifications and their acknowledgement), and each affected store's census answer.

CREATE TABLE incident (
    id                      uuid PRIMARY KEY,
    status                  text NOT NULL,
    -- When the controller became aware of the breach: both deadlines run from here
    -- (tenants: +24 h, as the privacy statements promise; authority: +72 h, Art. 33).
    detected_at             timestamptz NOT NULL,
    description             text NOT NULL,
    stores                  text[] NOT NULL,
    data_categories         text[] NOT NULL,
    all_tenants             boolean NOT NULL DEFAULT false,
    cause                   text,
    measures                text,
    contained_at            timestamptz,
    authority_notified_at   timestamptz,
    closed_at               timestamptz,
    opened_by               uuid,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT incident_status_check CHECK (status IN ('open', 'contained', 'closed'))
);
CREATE INDEX incident_open ON incident (detected_at) WHERE status <> 'closed';

CREATE TABLE incident_tenant (
    incident_id     uuid NOT NULL REFERENCES incident (id) ON DELETE CASCADE,
    tenant_id       uuid NOT NULL REFERENCES tenant (id),
    -- Distinct affected subjects attributed to the tenant by the census (a count, never a list).
    subjects        bigint,
    acknowledged_at timestamptz,
    acknowledged_by uuid,
    PRIMARY KEY (incident_id, tenant_id)
);
CREATE INDEX incident_tenant_tenant ON incident_tenant (tenant_id, incident_id);

-- Every notification sent to an affected tenant: the webhook delivery carries the attempts.
CREATE TABLE incident_notification (
    delivery_id bigint PRIMARY KEY REFERENCES webhook_delivery (id) ON DELETE CASCADE,
    incident_id uuid NOT NULL,
    tenant_id   uuid NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (incident_id, tenant_id) REFERENCES incident_tenant (incident_id, tenant_id)
        ON DELETE CASCADE
);
CREATE INDEX incident_notification_incident ON incident_notification (incident_id, tenant_id);

-- The latest census answer of each affected store (or that it did not answer).
CREATE TABLE incident_estimate (
    incident_id  uuid NOT NULL REFERENCES incident (id) ON DELETE CASCADE,
    store        text NOT NULL,
    answered     boolean NOT NULL,
    counted      boolean NOT NULL DEFAULT false,
    attributed   boolean NOT NULL DEFAULT false,
    tenants      jsonb NOT NULL DEFAULT '{}'::jsonb,
    unattributed bigint,
    method       text,
    error        text,
    asked_at     timestamptz NOT NULL,
    PRIMARY KEY (incident_id, store)
);

-- An incident's audit trail: its events carry the incident id in their detail.
CREATE INDEX audit_event_incident ON audit_event ((detail ->> 'incident_id'))
    WHERE detail ? 'incident_id';
