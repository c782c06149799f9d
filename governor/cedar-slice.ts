/**
 * Slicing a bundle at load time so each request evaluates only the policies
 * whose scope can match it. Cedar checks every policy it is given (about
 * 2 us each even when the scope rules it out), so a 1,000-policy bundle would
 * cost milliseconds per call; sliced, a request sees the policies for its
 * action and its server.
 *
 * Soundness: a policy is left out of a slice only when its scope alone proves
 * it cannot match; Cedar evaluates the scope before any condition, so such a
 * policy can neither be satisfied nor raise an error. A policy scoped to one
 * tool, resource or prompt goes only into that target's slice. Anything not understood
 * here (an unknown action type, a resource entity whose server cannot be
 * read from its ID) is kept in every slice of its actions. The equivalence
 * with unsliced evaluation is tested on generated requests
 * (test/governor/cedar-slice.test.ts).
 */
import type {
  ActionConstraint,
  EntityUidJson,
  ResourceConstraint,
  SchemaJson,
} from "@cedar-policy/cedar-wasm/nodejs";

export const CEDAR_NAMESPACE = "Cmcp";
const ACTION_TYPE = `${CEDAR_NAMESPACE}::Action`;

/** Entity types whose IDs are `<server>/<name>` (the engine builds them so). */
const SERVER_SCOPED = new Set([
  `${CEDAR_NAMESPACE}::Tool`,
  `${CEDAR_NAMESPACE}::Resource`,
  `${CEDAR_NAMESPACE}::Prompt`,
]);
const SERVER_TYPE = `${CEDAR_NAMESPACE}::Server`;

export interface ActionModel {
  /** Each concrete action (one with appliesTo) and the groups it is in, transitively, itself included. */
  ancestors: Map<string, Set<string>>;
}

/** Reads the action hierarchy from the schema's JSON form. */
export function actionModel(schema: SchemaJson<string>): ActionModel {
  const actions = schema[CEDAR_NAMESPACE]?.actions ?? {};
  const parents = new Map<string, string[]>();
  for (const [id, a] of Object.entries(actions)) {
    // Groups in another namespace would carry a type; they cannot match Cmcp::Action scopes by ID alone.
    parents.set(
      id,
      (a.memberOf ?? []).filter((m) => m.type === undefined || m.type === ACTION_TYPE).map((m) => m.id),
    );
  }
  const ancestors = new Map<string, Set<string>>();
  for (const [id, a] of Object.entries(actions)) {
    if ((a.appliesTo?.principalTypes.length ?? 0) === 0) continue;
    const seen = new Set<string>([id]);
    const todo = [...(parents.get(id) ?? [])];
    while (todo.length > 0) {
      const g = todo.pop()!;
      if (seen.has(g)) continue;
      seen.add(g);
      todo.push(...(parents.get(g) ?? []));
    }
    ancestors.set(id, seen);
  }
  return { ancestors };
}

function uidOf(e: EntityUidJson): { type: string; id: string } {
  return "__entity" in e ? e.__entity : e;
}

/** The concrete actions a policy's action scope can match. */
function scopeActions(c: ActionConstraint, model: ActionModel): Set<string> {
  const all = new Set(model.ancestors.keys());
  if (c.op === "All") return all;
  const targets =
    c.op === "==" ? ("entity" in c ? [c.entity] : null) : "entity" in c ? [c.entity] : c.entities;
  if (targets === null) return all;
  const out = new Set<string>();
  for (const t of targets) {
    const uid = uidOf(t);
    if (uid.type !== ACTION_TYPE) return all; // not understood: keep everywhere
    for (const [action, anc] of model.ancestors) {
      if (c.op === "==" ? action === uid.id : anc.has(uid.id)) out.add(action);
    }
  }
  return out;
}

/** The server a policy's resource scope confines it to, or null when it may match any server. */
function scopeServer(c: ResourceConstraint): string | null {
  if (c.op === "All") return null;
  if (c.op === "is") return c.in && "entity" in c.in ? serverOfUid(c.in.entity) : null;
  return "entity" in c ? serverOfUid(c.entity) : null;
}

/**
 * The one tool, resource or prompt a policy's resource scope confines it to
 * (`==` or `in` such an entity: nothing is a descendant of one), as a slice
 * key, or null.
 */
function scopeTarget(c: ResourceConstraint): string | null {
  if ((c.op !== "==" && c.op !== "in") || !("entity" in c)) return null;
  const { type, id } = uidOf(c.entity);
  return SERVER_SCOPED.has(type) && serverOfUid(c.entity) !== null ? targetKey(type, id) : null;
}

export function targetKey(type: string, id: string): string {
  return `${type}\u0000${id}`;
}

function serverOfUid(e: EntityUidJson): string | null {
  const { type, id } = uidOf(e);
  if (type === SERVER_TYPE) return id;
  if (SERVER_SCOPED.has(type)) {
    const slash = id.indexOf("/");
    return slash > 0 ? id.slice(0, slash) : null;
  }
  return null;
}

export interface SlicePolicy {
  id: string;
  json: { action: ActionConstraint; resource: ResourceConstraint };
}

export interface Slice {
  /** Sorted policy IDs; the slice's identity. */
  ids: string[];
}

/**
 * For each (action, server) and, where policies name one, each (action,
 * server, tool/resource/prompt): the policies that can apply. Identical
 * slices are shared.
 */
export class SliceIndex {
  readonly #byKey = new Map<string, Slice>();
  readonly #unique = new Map<string, Slice>();

  constructor(policies: readonly SlicePolicy[], model: ActionModel) {
    type PerServer = { ids: string[]; byTarget: Map<string, string[]> };
    const perAction = new Map<string, { global: string[]; byServer: Map<string, PerServer> }>();
    for (const a of model.ancestors.keys()) perAction.set(a, { global: [], byServer: new Map() });
    for (const p of policies) {
      const server = scopeServer(p.json.resource);
      const target = server === null ? null : scopeTarget(p.json.resource);
      for (const a of scopeActions(p.json.action, model)) {
        const entry = perAction.get(a)!;
        if (server === null) {
          entry.global.push(p.id);
          continue;
        }
        let s = entry.byServer.get(server);
        if (!s) entry.byServer.set(server, (s = { ids: [], byTarget: new Map() }));
        if (target === null) s.ids.push(p.id);
        else {
          const list = s.byTarget.get(target) ?? [];
          list.push(p.id);
          s.byTarget.set(target, list);
        }
      }
    }
    for (const [action, { global, byServer }] of perAction) {
      this.#byKey.set(sliceKey(action, null), this.#share(global));
      for (const [server, { ids, byTarget }] of byServer) {
        this.#byKey.set(sliceKey(action, server), this.#share([...global, ...ids]));
        for (const [target, only] of byTarget)
          this.#byKey.set(sliceKey(action, server, target), this.#share([...global, ...ids, ...only]));
      }
    }
  }

  #share(ids: string[]): Slice {
    const sorted = [...new Set(ids)].sort();
    const key = sorted.join("\n");
    let s = this.#unique.get(key);
    if (!s) {
      s = { ids: sorted };
      this.#unique.set(key, s);
    }
    return s;
  }

  /**
   * The slice for a request whose resource is `target` (a targetKey) on
   * `server`; undefined for an action the schema does not define.
   */
  lookup(action: string, server: string | null, target: string | null = null): Slice | undefined {
    return (
      (server !== null && target !== null ? this.#byKey.get(sliceKey(action, server, target)) : undefined) ??
      (server !== null ? this.#byKey.get(sliceKey(action, server)) : undefined) ??
      this.#byKey.get(sliceKey(action, null))
    );
  }

  /** Distinct policy sets (each is preparsed once). */
  get slices(): Slice[] {
    return [...this.#unique.values()];
  }
}

function sliceKey(action: string, server: string | null, target: string | null = null): string {
  return server === null
    ? `${action}\u0000`
    : target === null
      ? `${action}\u0000${server}`
      : `${action}\u0000${server}\u0001${target}`;
}

/**
 * What a set of policies reads from a request beyond the principal, action
 * and resource UIDs: an entity is passed to Cedar only when some policy can
 * look at its ancestors, and the context only with the attributes some
 * policy reads. Each entity or attribute left out saves a conversion across
 * the wasm boundary (~10 us per entity, ~15 us for the datetime).
 *
 * Conservative: any mention of `principal`/`resource`/`action` in a
 * condition needs that entity; `context` used other than as `context.attr`
 * or `context has attr` needs the whole context.
 */
export interface RequestNeeds {
  principal: boolean;
  resource: boolean;
  action: boolean;
  /** Context attributes read, or "all". */
  context: Set<string> | "all";
}

export function noNeeds(): RequestNeeds {
  return { principal: false, resource: false, action: false, context: new Set() };
}

export function allNeeds(): RequestNeeds {
  return { principal: true, resource: true, action: true, context: "all" };
}

/** Adds what one policy reads to `acc`. */
export function addPolicyNeeds(
  acc: RequestNeeds,
  json: {
    principal: ResourceConstraint | { op: string };
    action: ActionConstraint;
    resource: ResourceConstraint;
    conditions: { body: unknown }[];
  },
): RequestNeeds {
  const usesHierarchy = (c: { op: string; in?: unknown }) =>
    c.op === "in" || (c.op === "is" && c.in !== undefined);
  if (usesHierarchy(json.principal as { op: string; in?: unknown })) acc.principal = true;
  if (usesHierarchy(json.resource as { op: string; in?: unknown })) acc.resource = true;
  if (json.action.op === "in") acc.action = true;
  for (const c of json.conditions) walk(c.body, acc);
  return acc;
}

function isContextVar(e: unknown): boolean {
  return typeof e === "object" && e !== null && (e as { Var?: unknown }).Var === "context";
}

function walk(node: unknown, acc: RequestNeeds): void {
  if (Array.isArray(node)) {
    for (const n of node) walk(n, acc);
    return;
  }
  if (typeof node !== "object" || node === null) return;
  const obj = node as Record<string, unknown>;
  for (const [key, value] of Object.entries(obj)) {
    // Literals are walked too: a string that looks like a variable only over-includes.
    if (key === "Var" && typeof value === "string") {
      if (value === "principal") acc.principal = true;
      else if (value === "resource") acc.resource = true;
      else if (value === "action") acc.action = true;
      else if (value === "context") acc.context = "all";
      continue;
    }
    if ((key === "." || key === "has") && typeof value === "object" && value !== null) {
      const { left, attr } = value as { left?: unknown; attr?: unknown };
      if (isContextVar(left)) {
        const first = Array.isArray(attr) ? attr[0] : attr;
        if (typeof first === "string" && acc.context !== "all") acc.context.add(first);
        else if (typeof first !== "string") acc.context = "all";
        continue;
      }
    }
    walk(value, acc);
  }
}
