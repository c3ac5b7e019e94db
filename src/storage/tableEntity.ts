/**
 * The Table storage operations every store here is built on: an insert that only one writer can win, a read that
 * tells "absent" from "failed", and a replace and a delete guarded by the ETag the writer read.
 */
import type { TableClient, TableEntity } from '@azure/data-tables';
import { storageStatusCode } from './storageClients';

/** Inserts `entity`; returns its ETag, or undefined (and writes nothing) when it already exists. */
export async function insertEntity(table: TableClient, entity: TableEntity): Promise<string | undefined> {
  try {
    return (await table.createEntity(entity)).etag ?? '';
  } catch (error) {
    if (storageStatusCode(error) === 409) return undefined;
    throw error;
  }
}

/** The entity with its ETag, or undefined when there is none. */
export async function readEntity<T extends object>(
  table: TableClient,
  partitionKey: string,
  rowKey: string,
): Promise<(T & { etag: string }) | undefined> {
  try {
    return (await table.getEntity<T>(partitionKey, rowKey)) as T & { etag: string };
  } catch (error) {
    if (storageStatusCode(error) === 404) return undefined;
    throw error;
  }
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
  try {
    return (await table.updateEntity(entity, 'Replace', { etag })).etag ?? '';
  } catch (error) {
    if (storageStatusCode(error) === 412) return undefined;
    throw error;
  }
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
  try {
    await table.deleteEntity(partitionKey, rowKey, { etag });
    return true;
  } catch (error) {
    const status = storageStatusCode(error);
    if (status === 412 || status === 404) return false;
    throw error;
  }
}
