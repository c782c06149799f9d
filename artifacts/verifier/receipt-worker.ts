/** Piscina worker: checks a batch of receipts off the main thread. */
import { checkBatch, type ReceiptBatch, type ReceiptCheck } from "./check-receipt.js";

export default function run(batch: ReceiptBatch): ReceiptCheck[] {
  return checkBatch(batch);
}
