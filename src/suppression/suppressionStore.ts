/**
 * Suppressed recipients in Table storage `MailSuppressions`: one entity per (list, address). The PartitionKey is the
 * list id, or `*` for a suppression from every bulk list; the RowKey is the SHA-256 of the lower-cased address (an
 * address may hold characters a key may not). The send-time check is therefore two point reads, the list's row and
 * the global row, and a listing of one list is one partition.
 */
import { createHash } from 'node:crypto';
import { odata, type TableClient } from '@azure/data-tables';
import { deleteEntity, insertEntity, readEntity } from '../storage/tableEntity';

/** The PartitionKey of a suppression from every bulk list. */
export const ALL_LISTS = '*';
/** A list id: the template name of a bulk batch, or the list it names (lower-case letters, digits, dashes). */
export const LIST_ID = /^[a-z0-9][a-z0-9-]{0,63}$/;
export const MAX_LIST_ID_CHARS = 64;
/** The most suppressions one page of a listing holds. */
export const SUPPRESSION_PAGE_SIZE = 100;

/** How a suppression came to be: the recipient's unsubscribe link, or an operator over `/api/suppressions`. */
export type SuppressionSource = 'unsubscribe' | 'api';

export interface Suppression {
  /** The address, lower-cased. */
  address: string;
  /** The list it applies to; absent: every bulk list. */
  list?: string;
  source: SuppressionSource;
  createdAt: string;
}

type Entity = { partitionKey: string; rowKey: string; address: string; source: string; createdAt: string };

/** The key an address is stored under: SHA-256 of its lower-cased form. */
export function addressKey(address: string): string {
  return createHash('sha256').update(address.trim().toLowerCase()).digest('hex');
}

function fromEntity(entity: Entity): Suppression {
  return {
    address: entity.address,
    ...(entity.partitionKey !== ALL_LISTS ? { list: entity.partitionKey } : {}),
    source: entity.source === 'unsubscribe' ? 'unsubscribe' : 'api',
    createdAt: entity.createdAt,
  };
}

export class SuppressionStore {
  constructor(private readonly table: TableClient) {}

  /** Records a suppression; false when it was already there (the first one stays: adding is idempotent). */
  async add(suppression: Suppression): Promise<boolean> {
    const entity: Entity = {
      partitionKey: suppression.list ?? ALL_LISTS,
      rowKey: addressKey(suppression.address),
      address: suppression.address.trim().toLowerCase(),
      source: suppression.source,
      createdAt: suppression.createdAt,
    };
    return (await insertEntity(this.table, entity)) !== undefined;
  }

  /** Removes the suppression of `address` from `list` (or the global one); false when there was none. */
  async remove(address: string, list?: string): Promise<boolean> {
    return deleteEntity(this.table, list ?? ALL_LISTS, addressKey(address), '*');
  }

  /** The suppression of `address` from `list` itself (or the global one when `list` is undefined), if any. */
  async get(address: string, list?: string): Promise<Suppression | undefined> {
    const entity = await readEntity<Entity>(this.table, list ?? ALL_LISTS, addressKey(address));
    return entity && fromEntity(entity);
  }

  /**
   * What keeps bulk mail of `list` from `address`: its suppression from that list, else a global one; undefined when
   * the address may be sent to. Two point reads, in parallel.
   */
  async suppressedFrom(address: string, list: string): Promise<Suppression | undefined> {
    const [own, global] = await Promise.all([this.get(address, list), this.get(address)]);
    return own ?? global;
  }

  /**
   * One page of suppressions: those of `list` (one partition), or every one (the whole table, a page at a time).
   * `continuation` is the token the previous page returned.
   */
  async page(
    options: { list?: string | undefined; continuation?: string | undefined; pageSize?: number } = {},
  ): Promise<{ items: Suppression[]; continuation?: string }> {
    const pages = this.table
      .listEntities<Entity>(
        options.list !== undefined ? { queryOptions: { filter: odata`PartitionKey eq ${options.list}` } } : {},
      )
      .byPage({
        maxPageSize: options.pageSize ?? SUPPRESSION_PAGE_SIZE,
        ...(options.continuation ? { continuationToken: options.continuation } : {}),
      });
    const first = await pages.next();
    if (first.done) return { items: [] };
    const page = first.value as Entity[] & { continuationToken?: string };
    return {
      items: page.map(fromEntity),
      ...(page.continuationToken ? { continuation: page.continuationToken } : {}),
    };
  }
}
