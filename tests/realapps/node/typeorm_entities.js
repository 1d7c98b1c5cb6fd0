// The outreach app of seeds 003/004 as TypeORM entity schemas (plain JavaScript, no decorators):
// multi-tenant by "tenantId", camelCase column names as TypeORM names them by default.
import { EntitySchema } from "typeorm";

const id = { type: "int", primary: true, generated: "increment" };
const tenantId = { type: "int" };
const tenant = { type: "many-to-one", target: "Tenant", joinColumn: { name: "tenantId" } };
const createdAt = { type: "timestamptz", createDate: true };
const name = { type: "varchar", length: 200 };
const status = { type: "varchar", length: 20 };

export const Tenant = new EntitySchema({
  name: "Tenant", tableName: "tenants",
  columns: { id, name },
});

export const User = new EntitySchema({
  name: "User", tableName: "users",
  columns: { id, tenantId, name, email: { type: "varchar", length: 200 } },
  relations: { tenant },
  indices: [{ columns: ["tenantId"] }],
});

export const Contact = new EntitySchema({
  name: "Contact", tableName: "contacts",
  columns: {
    id, tenantId, ownerId: { type: "int", nullable: true },
    firstName: { type: "varchar", length: 100 }, lastName: { type: "varchar", length: 100 },
    phoneNumber: { type: "varchar", length: 32 }, email: { type: "varchar", length: 200, nullable: true }, createdAt,
  },
  relations: { tenant, owner: { type: "many-to-one", target: "User", joinColumn: { name: "ownerId" } } },
  indices: [{ columns: ["ownerId"] }],
  uniques: [{ columns: ["tenantId", "phoneNumber"] }],
});

export const Campaign = new EntitySchema({
  name: "Campaign", tableName: "campaigns",
  columns: { id, tenantId, name, status },
  relations: { tenant },
  indices: [{ columns: ["tenantId"] }],
});

export const CampaignContact = new EntitySchema({
  name: "CampaignContact", tableName: "campaign_contacts",
  columns: { id, tenantId, campaignId: { type: "int" }, contactId: { type: "int" }, status: { ...status, default: "PENDING" }, createdAt },
  relations: {
    tenant,
    campaign: { type: "many-to-one", target: "Campaign", joinColumn: { name: "campaignId" } },
    contact: { type: "many-to-one", target: "Contact", joinColumn: { name: "contactId" } },
  },
  indices: [{ columns: ["tenantId"] }, { columns: ["campaignId"] }, { columns: ["contactId"] }],
});

export const Journey = new EntitySchema({
  name: "Journey", tableName: "journeys",
  columns: { id, tenantId, name, status, updatedAt: { type: "timestamptz", updateDate: true } },
  relations: { tenant },
  indices: [{ columns: ["tenantId"] }],
});

export const JourneyNode = new EntitySchema({
  name: "JourneyNode", tableName: "journey_nodes",
  columns: {
    id, tenantId, journeyId: { type: "int" }, type: { type: "varchar", length: 20 },
    previousNodeId: { type: "int", nullable: true }, position: { type: "int" },
  },
  relations: { tenant, journey: { type: "many-to-one", target: "Journey", joinColumn: { name: "journeyId" } } },
  indices: [{ columns: ["tenantId"] }, { columns: ["journeyId"] }],
});

export const JourneyContact = new EntitySchema({
  name: "JourneyContact", tableName: "journey_contacts",
  columns: {
    id, tenantId, journeyId: { type: "int" }, contactId: { type: "int" }, status,
    enrolledAt: { type: "timestamptz" },
  },
  relations: {
    tenant,
    journey: { type: "many-to-one", target: "Journey", joinColumn: { name: "journeyId" } },
    contact: { type: "many-to-one", target: "Contact", joinColumn: { name: "contactId" } },
  },
  indices: [{ columns: ["journeyId", "tenantId", "status"] }, { columns: ["tenantId"] }, { columns: ["contactId"] }],
});

export const JourneyNodeExecution = new EntitySchema({
  name: "JourneyNodeExecution", tableName: "journey_node_executions",
  columns: {
    id, tenantId, journeyContactId: { type: "int" }, nodeId: { type: "int" }, status,
    scheduledAt: { type: "timestamptz", nullable: true }, executedAt: { type: "timestamptz", nullable: true }, createdAt,
  },
  relations: {
    tenant,
    journeyContact: { type: "many-to-one", target: "JourneyContact", joinColumn: { name: "journeyContactId" } },
    node: { type: "many-to-one", target: "JourneyNode", joinColumn: { name: "nodeId" } },
  },
  // seed 004 §2.1: the composite index the execution lookups use, and the scheduler's
  indices: [
    { columns: ["nodeId", "journeyContactId", "tenantId"] },
    { columns: ["journeyContactId"] },
    { columns: ["tenantId", "status", "scheduledAt"] },
  ],
});

export const Did = new EntitySchema({
  name: "Did", tableName: "dids",
  columns: { id, tenantId, number: { type: "varchar", length: 32 }, label: { type: "varchar", length: 100 }, createdAt },
  relations: { tenant },
  uniques: [{ columns: ["tenantId", "number"] }],
});

export const ENTITIES = [Tenant, User, Contact, Campaign, CampaignContact, Journey, JourneyNode, JourneyContact,
  JourneyNodeExecution, Did];
