-- The demo's tables, captured by configs/local.yaml and deploy/compose/changes.yaml.
-- `changes demo` runs this (it is idempotent); the postgres image of the
-- Docker Compose stack runs it once, when its data volume is empty.
-- Keys of every kind: accounts and campaigns by a bigint id, creatives by a
-- uuid, placements by (campaign_id, site), a site such as news.example/sports.
create table if not exists accounts (id bigint primary key, name text not null, budget numeric(14,2) not null, active boolean not null default true, updated_at timestamptz not null default now());
create table if not exists campaigns (id bigint primary key, account_id bigint not null, name text not null, bid numeric(10,4) not null, status text not null, targeting jsonb, updated_at timestamptz not null default now());
create table if not exists creatives (id uuid primary key default gen_random_uuid(), campaign_id bigint not null, format text not null, url text not null, updated_at timestamptz not null default now());
create table if not exists placements (campaign_id bigint not null, site text not null, bid numeric(10,4) not null, updated_at timestamptz not null default now(), primary key (campaign_id, site));
