-- Demo tables captured by deploy/compose/changes.yaml. The postgres image runs
-- this once, when the data volume is empty.
create table if not exists accounts (id bigint primary key, name text not null, budget numeric(14,2) not null, active boolean not null default true, updated_at timestamptz not null default now());
create table if not exists campaigns (id bigint primary key, account_id bigint not null, name text not null, bid numeric(10,4) not null, status text not null, targeting jsonb, updated_at timestamptz not null default now());
