"""Users and their API keys (admin only)."""

from uuid import UUID

from fastapi import APIRouter, status

from mailfleet_api import auth, pages, queries, schemas
from mailfleet_api.deps import Admin, Cursor, DbConn, Limit, PasswordsDep
from mailfleet_api.errors import ConflictError, ForbiddenError, NotFoundError
from mailfleet_api.pages import BY_CREATION
from mailfleet_api.schemas.users import ApiKeyPage, UserPage

router = APIRouter(prefix="/api/admin", tags=["users"])


@router.post("/users", status_code=status.HTTP_201_CREATED)
async def create_user(
    body: schemas.UserCreate, conn: DbConn, _: Admin, passwords: PasswordsDep
) -> schemas.User:
    """Create a user with a role; the password must pass the password policy."""
    password_hash = await passwords.hash(body.password.get_secret_value())
    user = await queries.insert_user(conn, body.email, password_hash, body.role)
    if user is None:
        raise ConflictError(f"a user with email {body.email} exists already")
    return user


@router.get("/users")
async def list_users(conn: DbConn, _: Admin, limit: Limit = 50, cursor: Cursor = None) -> UserPage:
    """List users, oldest first, a page at a time."""
    items, more = await queries.list_users(conn, limit, pages.after(cursor, BY_CREATION))
    return pages.cursor_page(UserPage, items, more, limit, lambda u: (u.created_at, u.id))


@router.post("/api-keys", status_code=status.HTTP_201_CREATED)
async def create_api_key(
    body: schemas.ApiKeyCreate, conn: DbConn, principal: Admin
) -> schemas.ApiKeyCreated:
    """Create an API key for the caller; the key is in this response only."""
    role = body.role or principal.role
    if auth.ROLE_RANK[role] > auth.ROLE_RANK[principal.role]:
        raise ForbiddenError(f"a key cannot carry more than your own role ({principal.role})")
    new = auth.generate_api_key()
    stored = await queries.insert_api_key(
        conn, principal.user_id, body.name, new.prefix, new.key_hash, role, body.rate_limit
    )
    return schemas.ApiKeyCreated(**stored.model_dump(), key=new.key)


@router.get("/api-keys")
async def list_api_keys(
    conn: DbConn, _: Admin, limit: Limit = 50, cursor: Cursor = None
) -> ApiKeyPage:
    """List API keys (never the keys themselves), oldest first, a page at a time."""
    items, more = await queries.list_api_keys(conn, limit, pages.after(cursor, BY_CREATION))
    return pages.cursor_page(ApiKeyPage, items, more, limit, lambda k: (k.created_at, k.id))


@router.delete("/api-keys/{key_id}")
async def revoke_api_key(key_id: UUID, conn: DbConn, _: Admin) -> schemas.ApiKey:
    """Revoke an API key; it is refused from then on."""
    key = await queries.revoke_api_key(conn, key_id)
    if key is None:
        raise NotFoundError(f"no API key {key_id}")
    return key
