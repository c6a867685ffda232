-- The demo's tables, captured by configs/local.yaml and deploy/compose/changes.yaml.
-- `changes demo` runs this (it is idempotent); the postgres image of the
-- Docker Compose stack runs it once, when its data volume is empty.
create table if not exists accounts (id bigint primary key, name text not null, budget numeric(14,2) not null, active boolean not null default true, updated_at timestamptz not null default now());
create table if not exists campaigns (id bigint primary key, account_id bigint not null, name text not null, bid numeric(10,4) not null, status text not null, targeting jsonb, updated_at timestamptz not null default now());
