/**
 * The Table storage operations every store here is built on: an insert that only one writer can win, a read that
 * tells "absent" from "failed", and a replace and a delete guarded by the ETag the writer read.
 */
import type { TableClient, TableEntity } from '@azure/data-tables';
import { catchStatus } from './storageClients';

/** Inserts `entity`; returns its ETag, or undefined (and writes nothing) when it already exists. */
export async function insertEntity(table: TableClient, entity: TableEntity): Promise<string | undefined> {
  return catchStatus(async () => (await table.createEntity(entity)).etag ?? '', [409], undefined);
}

/** The entity with its ETag, or undefined when there is none. */
export async function readEntity<T extends object>(
  table: TableClient,
  partitionKey: string,
  rowKey: string,
): Promise<(T & { etag: string }) | undefined> {
  return catchStatus(
    async () => (await table.getEntity<T>(partitionKey, rowKey)) as T & { etag: string },
    [404],
    undefined,
  );
}

/**
 * Replaces the entity if nobody has written it since the read that returned `etag`; returns the new ETag, or
 * undefined when it no longer matches (412: re-read and decide again). An empty ETag would make the write
 * unconditional, so it is refused.
 */
export async function replaceEntity(
  table: TableClient,
  entity: TableEntity,
  etag: string,
): Promise<string | undefined> {
  if (!etag)
    throw new Error(`Entity ${entity.partitionKey}/${entity.rowKey} has no ETag; re-read it before writing it`);
  return catchStatus(async () => (await table.updateEntity(entity, 'Replace', { etag })).etag ?? '', [412], undefined);
}

/**
 * Deletes the entity if nobody has written it since the read that returned `etag` (`*` deletes whatever is there).
 * Returns false when it no longer matches (412) or is already gone (404): either way, someone else decided.
 */
export async function deleteEntity(
  table: TableClient,
  partitionKey: string,
  rowKey: string,
  etag: string,
): Promise<boolean> {
  if (!etag) throw new Error(`Entity ${partitionKey}/${rowKey} has no ETag; re-read it before deleting it`);
  return catchStatus(
    async () => {
      await table.deleteEntity(partitionKey, rowKey, { etag });
      return true;
    },
    [412, 404],
    false,
  );
}

/** Inserts `value` as `toEntity` maps it: the value with its ETag, or undefined (nothing written) when it exists. */
export async function insertValue<T extends object>(
  table: TableClient,
  value: T,
  toEntity: (value: T) => TableEntity,
): Promise<(T & { etag: string }) | undefined> {
  const etag = await insertEntity(table, toEntity(value));
  return etag === undefined ? undefined : { ...value, etag };
}

/**
 * Replaces `current` with `changes` applied (a change to `undefined` removes the field) if nobody has written it
 * since it was read: the new value with its ETag, or undefined when the ETag no longer matches (412: re-read and
 * decide again). A replace, not a merge: a field the new value no longer has is not left behind.
 */
/** Fields a write may change; a field given as `undefined` is removed. */
export type Changes<T> = { [K in keyof T]?: T[K] | undefined };

export async function replaceWithChanges<T extends object>(
  table: TableClient,
  current: T & { etag: string },
  changes: Changes<T>,
  toEntity: (value: T) => TableEntity,
): Promise<(T & { etag: string }) | undefined> {
  const { etag, ...rest } = current;
  const next = { ...rest, ...changes } as Record<string, unknown>;
  for (const [key, value] of Object.entries(changes)) {
    if (value === undefined) delete next[key];
  }
  const written = await replaceEntity(table, toEntity(next as T), etag);
  return written === undefined ? undefined : { ...(next as T), etag: written };
}
