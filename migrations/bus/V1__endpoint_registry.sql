-- The framework's own schema. Queue and delayed tables are not made here but by each
-- endpoint's installer at start-up, because their names come from the endpoint names.
CREATE SCHEMA IF NOT EXISTS bus;

-- One row per installed endpoint. installer_version records which release of the
-- installer last shaped the endpoint's tables, so a newer one knows what to upgrade.
CREATE TABLE bus.endpoints (
    name              text        PRIMARY KEY,
    installer_version integer     NOT NULL,
    installed_at      timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);
