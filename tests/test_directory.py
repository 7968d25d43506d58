"""Contact identity: phone and user id linked; 'new' only when nothing can be stored yet."""

from __future__ import annotations

from engine.directory import Directory
from engine.events import Customer
from engine.ports import Alias


def test_a_new_customer_gets_a_key_from_its_first_id_and_both_links() -> None:
    d = Directory()
    key, links, new = d.resolve(Customer("n", user_id="US.1", phone="155"))
    assert key == "n:US.1" and new
    assert links == [Alias("n", "US.1", "n:US.1"), Alias("n", "155", "n:US.1")]
    assert d.resolve(Customer("n", phone="155")) == ("n:US.1", [], False)
    assert d.resolve(Customer("n", user_id="US.1")) == ("n:US.1", [], False)


def test_a_user_id_seen_later_joins_the_phone_conversation() -> None:
    d = Directory()
    d.resolve(Customer("n", phone="155"))
    key, links, new = d.resolve(Customer("n", user_id="US.1", phone="155"))
    assert (key, links, new) == ("n:155", [Alias("n", "US.1", "n:155")], False)


def test_the_same_customer_on_another_number_is_another_contact() -> None:
    d = Directory()
    assert d.resolve(Customer("n1", phone="155"))[0] == "n1:155"
    assert d.resolve(Customer("n2", phone="155"))[0] == "n2:155"


def test_two_known_ids_of_different_contacts_relink_to_the_user_ids_contact() -> None:
    d = Directory()
    d.load([Alias("n", "US.1", "n:US.1"), Alias("n", "155", "n:155")])
    key, links, new = d.resolve(Customer("n", user_id="US.1", phone="155"))
    assert (key, links, new) == ("n:US.1", [Alias("n", "155", "n:US.1")], False)
    assert d.lookup("n", "155") == "n:US.1"


def test_a_key_whose_links_were_forgotten_is_never_new_again() -> None:
    """After a failed write, a stored conversation may exist without links: always read it."""
    d = Directory()
    key, links, new = d.resolve(Customer("n", phone="155"))
    assert new
    d.forget(links)
    assert d.lookup("n", "155") is None
    assert d.resolve(Customer("n", phone="155")) == (key, [Alias("n", "155", key)], False)
