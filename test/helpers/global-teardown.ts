export default async function globalTeardown(): Promise<void> {
  const replSet = (globalThis as Record<string, unknown>).__MONGO_REPLSET__ as { stop(): Promise<unknown> } | undefined;
  if (replSet) await replSet.stop();
}
